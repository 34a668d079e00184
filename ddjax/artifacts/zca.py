"""The ZCA whitening transform of the train split (only with ``experts.zca``, classic MTT's
option): fitted once by ``ddjax experts`` so that every later stage whitens its inputs with the
same matrices. See docs/mkdt.md#options.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ddjax.artifacts.base import Artifact
from ddjax.data.transforms import Zca

ZCA = Artifact("ZCA whitening", "experts/zca", "ddjax experts",
               identity=("dataset", "train_subset", "eps"))


def write_zca(directory: str | Path, zca: Zca, meta: dict) -> dict:
    """Write the fitted transform; ``meta`` holds its identity (dataset, train_subset, eps)."""
    return ZCA.write(directory, meta, dataclasses.asdict(zca))


def read_zca(directory: str | Path) -> tuple[Zca, dict]:
    """``(Zca, meta)`` of a complete artifact."""
    arrays, meta = ZCA.read(directory)
    return Zca(**{k: np.asarray(v) for k, v in arrays.items()}), meta
