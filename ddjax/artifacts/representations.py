"""The teacher's representations of the train split: MKDT's regression targets, one float32 row
per train image, written by ``ddjax represent``, read by the experts, select, distill and eval
stages. Its identity is the teacher's digest and the data it encodes, so representations of
another teacher or dataset are refused. See docs/mkdt.md#representations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddjax.artifacts.base import Artifact

REPRESENTATIONS = Artifact(
    "teacher representations", "represent/representations", "ddjax represent",
    identity=("teacher_sha256", "dataset", "split", "train_subset", "normalisation"))
KEY = "representations"


def write_representations(directory: str | Path, representations: np.ndarray, meta: dict) -> dict:
    """Write ``representations`` (float32 ``[N, D]``) with ``meta``; returns the meta written."""
    return REPRESENTATIONS.write(directory, meta, {KEY: np.asarray(representations, np.float32)})


def read_representations(directory: str | Path) -> tuple[np.ndarray, dict]:
    """``(representations float32 [N, D], meta)`` of a complete artifact."""
    arrays, meta = REPRESENTATIONS.read(directory)
    return np.asarray(arrays[KEY], np.float32), meta
