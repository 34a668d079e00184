"""Image sets for linear-probe evaluation on disk: LGM's distilled sets and the baselines' picks.

``<dir>/set`` (an Orbax pytree: ``images`` float32 NHWC in [0, 1], ``labels`` int32),
``<dir>/set.json`` (what made it: method, backbone, dataset, sizes, steps, ...), ``<dir>/grid.png``
(one row per class when ipc > 1, else one row) and ``<dir>/images/NNNNN_<class>.png``. Everything
is written under ``<dir>.tmp`` and renamed, so an existing ``<dir>`` is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.errors import DdjaxError
from ddjax.viz import save_image_grid

SET, META, GRID, IMAGES = "set", "set.json", "grid.png", "images"


def is_complete(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / SET).exists() and (directory / META).exists()


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(images01, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image_set(directory: str | Path, images01, labels, meta: dict,
                    class_names: tuple[str, ...] | None = None) -> Path:
    """Write a set (see the module docstring); refuses to replace a complete one."""
    directory = Path(directory)
    if is_complete(directory):
        raise DdjaxError(f"{directory} already holds an image set; remove it to write a new one")
    images = np.asarray(images01, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise DdjaxError(f"an image set needs [N, H, W, 3] images and N labels, got {images.shape} "
                         f"and {labels.shape}")
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_pytree(tmp / SET, {"images": images, "labels": labels})
    per_class = np.bincount(labels).max() if len(labels) else 1
    save_image_grid(images, tmp / GRID, columns=len(images) if per_class == 1 else int(per_class),
                    scale=max(1, 128 // images.shape[1]))
    (tmp / IMAGES).mkdir()
    for i, (image, label) in enumerate(zip(to_uint8(images), labels)):
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        Image.fromarray(image).save(tmp / IMAGES / f"{i:05d}_{_safe(name)}.png")
    meta = dict(meta, num_images=int(len(images)), image_size=list(images.shape[1:3]))
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def read_image_set(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images float32 NHWC in [0, 1], labels int32, meta) of a complete set."""
    directory = Path(directory)
    if not is_complete(directory):
        raise DdjaxError(f"no image set in {directory} (expected {SET} and {META}); "
                         "run `ddjax distill lgm` with the same --workdir first")
    tree = load_pytree(directory / SET)
    meta = json.loads((directory / META).read_text())
    return np.asarray(tree["images"], np.float32), np.asarray(tree["labels"], np.int32), meta


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))
