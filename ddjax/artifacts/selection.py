"""Subsets of the train split: ``select/<method>_<p>pct`` holds int64 indices into it (and, for
the high-loss method, every example's score). Written by ``ddjax select high-loss|random``;
distillation starts from one and evaluation pre-trains on them as baselines. A selection is
never replaced by a different one. See docs/mkdt.md#high-loss-selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddjax.artifacts.base import Artifact
from ddjax.errors import DdjaxError

SELECTION = Artifact("selection", "select/{method}_{percent:g}pct", "ddjax select",
                     identity=("method", "percent", "dataset", "train_subset", "seed", "epoch"))
METHODS = ("high_loss", "random")


def command(method: str) -> str:
    """The command that writes ``method``'s selections: ``ddjax select high-loss``."""
    return f"ddjax select {method.replace('_', '-')}"


def write_selection(directory: str | Path, indices: np.ndarray, meta: dict,
                    scores: np.ndarray | None = None) -> dict:
    """Write a selection; where a complete one is, it must have ``meta``'s identity and the same
    indices (it is left as it is), else this is an error: nothing is silently replaced."""
    directory = Path(directory)
    indices = np.asarray(indices, np.int64)
    if SELECTION.is_complete(directory):
        found, existing = read_selection(directory)
        SELECTION.check(existing, meta, directory)
        if not np.array_equal(found, indices):
            raise DdjaxError(f"{directory} holds a different selection; move it away or use "
                             "another --workdir")
        return existing
    arrays = {"indices": indices}
    if scores is not None:
        arrays["scores"] = np.asarray(scores)
    return SELECTION.write(directory, dict(meta, size=int(len(indices))), arrays)


def read_selection(directory: str | Path) -> tuple[np.ndarray, dict]:
    """``(indices int64, meta)`` of a complete selection."""
    arrays, meta = SELECTION.read(directory)
    return np.asarray(arrays["indices"], np.int64), meta


def selection_indices(workdir: str | Path, method: str, percent: float,
                      data: dict) -> tuple[np.ndarray, Path]:
    """The indices of ``method``'s ``percent``% selection in ``workdir``, and its directory,
    checked to index the same data (``data``: dataset and train_subset); one line naming the
    command to run when it is missing."""
    directory = SELECTION.locate(workdir, method=method, percent=percent)
    if not SELECTION.is_complete(directory):
        raise DdjaxError(f"no {method} selection of {percent:g}% at {directory}; run "
                         f"`{command(method)}` with select.percents including {percent:g} first")
    indices, meta = read_selection(directory)
    SELECTION.check(meta, data, directory)
    return indices, directory
