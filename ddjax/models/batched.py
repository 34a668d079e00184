"""Run a compiled function over many rows in fixed-size batches, and put the results together.

The last batch is padded (by repeating its last row) to the full batch size, so one compiled
shape serves every batch; the padded rows' results are dropped. ``pad=False`` runs the last batch
at its own size instead (for functions with batch-dependent state, e.g. BatchNorm in training
mode). One batch is in flight while the host prepares the next.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from ddjax.errors import DdjaxError
from ddjax.runlog import progress


def batch_indices(n: int, batch_size: int, pad: bool = True) -> Iterator[tuple[np.ndarray, int]]:
    """``(idx, valid)`` of the batches :func:`map_batches` takes, in order: ``idx`` the row
    indices (padded with the last row to ``batch_size`` when ``pad``), ``valid`` the real ones."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = len(idx)
        if pad and valid < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - valid, idx[-1])])
        yield idx, valid


def map_batches(fn: Callable[[Any], Any], n: int, batch_size: int,
                take: Callable[[np.ndarray], Any], *, axis: int = 0, pad: bool = True,
                desc: str | None = None) -> np.ndarray:
    """``fn(take(idx))`` for consecutive row indices ``idx`` (int arrays of ``batch_size``,
    0 .. n-1 in order), concatenated along ``axis`` into a numpy array with ``n`` entries there.

    ``take(idx)`` builds ``fn``'s input for rows ``idx`` (any pytree ``fn`` accepts); ``fn``
    returns one array whose ``axis`` runs over the batch's rows. With ``pad`` every batch has
    ``batch_size`` rows, even when ``n < batch_size`` (pass ``min(batch_size, n)`` to compile a
    smaller shape for small inputs). ``desc`` shows a progress bar.
    """
    if batch_size < 1:
        raise DdjaxError(f"batch size must be >= 1, got {batch_size}")
    if n < 1:
        raise ValueError(f"map_batches needs at least one row, got n={n}")
    cut = (slice(None),) * axis
    outputs, pending = [], None
    bar = progress(total=-(-n // batch_size), desc=desc) if desc else None

    def collect(result, valid: int) -> None:  # waits for a batch; the bar counts finished ones
        outputs.append(np.asarray(result)[cut + (slice(0, valid),)])
        if bar is not None:
            bar.update(1)

    for idx, valid in batch_indices(n, batch_size, pad):
        out = fn(take(idx))  # dispatched; waited for after the next batch is dispatched
        if pending is not None:
            collect(*pending)
        pending = (out, valid)
    collect(*pending)
    if bar is not None:
        bar.close()
    return np.concatenate(outputs, axis=axis)
