"""Distilled sets on disk: what a distillation run leaves for evaluation and for people.

``<dir>/synset`` (an Orbax pytree: ``images`` normalised NHWC float32, ``pixels`` in [0, 1],
``targets``, ``lr``), ``<dir>/synset.json`` (dataset, normalisation, ZCA digest, iteration,
how it was made) and ``<dir>/grid.png``. The directory is written under a temporary name and
renamed, so an existing ``iter_*`` directory is always complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.errors import DdjaxError
from ddjax.viz import save_image_grid

SYNSET, META, GRID = "synset", "synset.json", "grid.png"


def write_synset(directory: str | Path, images, pixels, targets, lr, meta: dict) -> Path:
    """Write one distilled set; an existing complete directory is left as it is.

    ``images`` are what the student sees (normalised, possibly ZCA-whitened); ``pixels`` the same
    images mapped back to [0, 1] by the caller, who knows the transforms.
    """
    directory = Path(directory)
    if (directory / META).exists():
        return directory
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    save_pytree(tmp / SYNSET, {"images": np.asarray(images, np.float32), "pixels": pixels,
                               "targets": np.asarray(targets), "lr": np.asarray(lr, np.float32)})
    save_image_grid(pixels[: meta.get("grid_images", 100)], tmp / GRID, scale=2)
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp.rename(directory)
    return directory


def read_synset(directory: str | Path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a distilled set written by ``write_synset``."""
    directory = Path(directory)
    if not (directory / META).exists():
        raise DdjaxError(f"no distilled set at {directory} ({META} missing); run `ddjax distill` first")
    return load_pytree(directory / SYNSET), json.loads((directory / META).read_text())
