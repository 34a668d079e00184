"""Seeded index subsets of a dataset: label fractions, random subsets, class-balanced subsets.

All return int64 numpy index arrays and depend only on their arguments, so a seed stored with a
run reproduces its subset exactly.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from ddjax.errors import DdjaxError


def label_fraction_indices(n: int, frac: float, seed: int) -> np.ndarray:
    """The labelled subset of MKDT's linear probe: `random.sample(range(n), int(n * frac))`
    with Python's `random` seeded by `seed`, in sample order. Not class-balanced (as in the
    reference; docs/mkdt.md, Evaluation)."""
    if not 0.0 < frac <= 1.0:
        raise DdjaxError(f"label fraction must be in (0, 1], got {frac}")
    k = int(n * frac)
    if k < 1:
        raise DdjaxError(f"label fraction {frac} of {n} examples selects none; use a larger one")
    return np.array(random.Random(seed).sample(range(n), k), dtype=np.int64)


def random_subset(n: int, k: int, seed: int) -> np.ndarray:
    """`k` distinct indices out of `range(n)`, drawn with `np.random.default_rng(seed)`, sorted
    ascending (the subset is a set; sorted indices also read sequentially)."""
    if not 0 < k <= n:
        raise DdjaxError(f"cannot draw {k} distinct examples out of {n}; use 1 <= k <= {n}")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def test_rows(n: int, subset: int) -> np.ndarray:
    """The rows of a test split of ``n`` that probes are scored on (``test_subset``): all of them
    when ``subset`` is 0 or at least ``n``, else a fixed :func:`random_subset` of ``subset``."""
    return random_subset(n, subset, seed=0) if 0 < subset < n else np.arange(n, dtype=np.int64)


def class_balanced_subset(
    labels: Sequence[int] | np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """`per_class` distinct indices of every class present in `labels`, drawn with
    `np.random.default_rng(seed)`; grouped by class in ascending label order, sorted within a
    class (so labels[result] is [c0]*per_class + [c1]*per_class + ...)."""
    labels = np.asarray(labels)
    if per_class < 1:
        raise DdjaxError(f"per-class count must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class > len(members):
            raise DdjaxError(
                f"class {label} has {len(members)} examples, fewer than {per_class} per class"
            )
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(chosen).astype(np.int64)
