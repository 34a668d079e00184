"""MKDT's distilled sets: ``distill/synsets/iter_NNNNNN`` after NNNNNN updates, written by
``ddjax distill mkdt`` and pre-trained on by ``ddjax eval mkdt``. Arrays: ``images`` as the
student sees them (normalised, possibly ZCA-whitened), ``pixels`` in [0, 1], ``targets``, ``lr``;
the meta says how the set was made (dataset, normalisation, mode, model, init); ``grid.png``
shows it. See docs/mkdt.md#trajectory-matching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddjax.artifacts.base import Artifact
from ddjax.errors import DdjaxError
from ddjax.viz import save_image_grid

SYNSET = Artifact(
    "distilled set", "distill/synsets/iter_{iteration:06d}", "ddjax distill mkdt",
    identity=("dataset", "mean", "std", "zca", "mode", "model", "model_kwargs", "num_outputs",
              "ssl", "init", "init_indices"))
GRID = "grid.png"


def write_synset(directory: str | Path, images, pixels, targets, lr, meta: dict) -> Path:
    """Write one distilled set; a complete one already there must have ``meta``'s identity and
    is left as it is (a resumed run recomputes the same arrays).

    ``images`` are what the student sees; ``pixels`` the same images mapped back to [0, 1] by
    the caller, who knows the transforms.
    """
    directory = Path(directory)
    if SYNSET.is_complete(directory):
        SYNSET.check(SYNSET.read_meta(directory), meta, directory)
        return directory
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    arrays = {"images": np.asarray(images, np.float32), "pixels": pixels,
              "targets": np.asarray(targets), "lr": np.asarray(lr, np.float32)}
    SYNSET.write(directory, meta, arrays, extra=lambda tmp: save_image_grid(
        pixels[: meta.get("grid_images", 100)], tmp / GRID, scale=2))
    return directory


def read_synset(directory: str | Path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a complete distilled set."""
    return SYNSET.read(directory)


def find_synset(path: str | Path, iteration: int = -1) -> Path:
    """A complete distilled set: ``path`` itself when it is one, else the set of ``iteration``
    updates (-1: the latest complete one) in the workdir ``path``."""
    path = Path(path).absolute()
    if SYNSET.is_complete(path):
        return path
    if iteration >= 0:
        chosen = SYNSET.locate(path, iteration=iteration)
        if not SYNSET.is_complete(chosen):
            saved = [p.name for p in SYNSET.complete_under(chosen.parent, "iter_*")]
            raise DdjaxError(f"no complete distilled set {chosen}; saved: {', '.join(saved) or 'none'}")
        return chosen
    done = SYNSET.complete_under(SYNSET.locate(path, iteration=0).parent, "iter_*")
    if not done:
        raise DdjaxError(f"no complete distilled set in {path}; run `ddjax distill mkdt` with "
                         "--workdir there first")
    return done[-1]
