"""Image sets for linear-probe evaluation: LGM's distilled sets and the baselines' real picks.

Both are artifacts of one format: arrays ``{"images": float32 NHWC in [0, 1], "labels": int32}``,
a meta saying what made the set (plus ``num_images`` and ``image_size``), and for people
``grid.png`` (one row per class when ipc > 1, else one row) and ``images/NNNNN_<class>.png``.
See docs/lgm.md#evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddjax.artifacts.base import Artifact
from ddjax.errors import DdjaxError
from ddjax.viz import save_image_grid

LGM_SET = Artifact("LGM image set", "lgm/{tag}/set", "ddjax distill lgm",
                   identity=("dataset", "backbone", "feature_dim", "ipc", "syn_res"))
BASELINE_SET = Artifact("baseline image set", "lgm_eval/sets/{name}", "ddjax eval lgm",
                        identity=("method", "dataset", "ipc", "seed", "backbone"))

GRID, IMAGES = "grid.png", "images"


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(images01, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image_set(artifact: Artifact, directory: str | Path, images01, labels, meta: dict,
                    class_names: tuple[str, ...] | None = None) -> dict:
    """Write a set as ``artifact`` at ``directory`` (a partial one is redone, a complete one
    refused); returns the meta as written."""
    images = np.asarray(images01, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise DdjaxError(f"an image set needs [N, H, W, 3] images and N labels, got {images.shape} "
                         f"and {labels.shape}")

    def for_people(tmp: Path) -> None:
        per_class = np.bincount(labels).max() if len(labels) else 1
        columns = len(images) if per_class == 1 else int(per_class)
        save_image_grid(images, tmp / GRID, columns=columns, scale=max(1, 128 // images.shape[1]))
        (tmp / IMAGES).mkdir()
        for i, (image, label) in enumerate(zip(to_uint8(images), labels)):
            name = class_names[label] if class_names and label < len(class_names) else str(label)
            Image.fromarray(image).save(tmp / IMAGES / f"{i:05d}_{_safe(name)}.png")

    meta = dict(meta, num_images=int(len(images)), image_size=list(images.shape[1:3]))
    return artifact.write(directory, meta, {"images": images, "labels": labels}, extra=for_people)


def read_image_set(artifact: Artifact,
                   directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images float32 NHWC in [0, 1], labels int32, meta) of a complete set."""
    tree, meta = artifact.read(directory)
    return np.asarray(tree["images"], np.float32), np.asarray(tree["labels"], np.int32), meta


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))
