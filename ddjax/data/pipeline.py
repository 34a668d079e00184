"""A config's ``data`` section turned into arrays: what every stage starts from.

The section has ``name``, ``archive`` and ``data_dir``; empty strings mean the defaults
(``$DDJAX_ARCHIVE_DIR`` or ../shared/data for archives, ``$DDJAX_DATA_DIR`` or the cache dir).
An optional ``train_subset`` > 0 keeps that many train examples (a seeded random subset in
dataset order, the same for every stage) for small runs; 0 keeps the whole split. ``stream``
(default False) asks the stages that can (docs/scaling.md#reading-the-data) to read each batch
from the source, each process its rows, instead of loading the split (:func:`open_rows`,
:mod:`ddjax.data.stream`); the rows are the same either way.
"""

from __future__ import annotations

import numpy as np

from ddjax.data.registry import DatasetSpec
from ddjax.data.sources import load_arrays, open_split, spec_for
from ddjax.data.stream import LoadedSplit, SplitReader
from ddjax.data.subsets import random_subset
from ddjax.data.transforms import normalize


def _locations(data_config) -> dict:
    return {"archive": data_config.archive or None, "data_dir": data_config.data_dir or None}


def dataset_spec(data_config) -> DatasetSpec:
    """The spec of the configured dataset (its classes, size, normalisation)."""
    return spec_for(data_config.name, **_locations(data_config))


def _kept(data_config, split: str, n: int) -> np.ndarray | None:
    """The records of a split of ``n`` that ``train_subset`` keeps; None: all of them."""
    keep = data_config.get("train_subset", 0) if split == "train" else 0
    return random_subset(n, keep, seed=0) if keep else None


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 NHWC, labels int32)`` of a split, in the dataset's stored order."""
    images, labels = load_arrays(data_config.name, split, **_locations(data_config))
    chosen = _kept(data_config, split, len(labels))
    if chosen is not None:
        images, labels = images[chosen], labels[chosen]
    return images, labels


def open_rows(data_config, split: str) -> LoadedSplit | SplitReader:
    """A split's rows, those of :func:`load_split`: loaded whole, or with ``data.stream`` read
    from the source on demand."""
    if not data_config.get("stream", False):
        return LoadedSplit(*load_split(data_config, split))
    source = open_split(data_config.name, split, **_locations(data_config))
    return SplitReader(source, _kept(data_config, split, len(source)),
                       dataset_spec(data_config).resize_to)


def load_normalized(data_config, split: str) -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    """``(images float32 NHWC normalised with the dataset's constants, labels, spec)``."""
    spec = dataset_spec(data_config)
    images, labels = load_split(data_config, split)
    return np.asarray(normalize(images, spec.mean, spec.std), np.float32), labels, spec
