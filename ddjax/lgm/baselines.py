"""LGM's real-image baselines: which train images each one picks (docs/lgm.md#evaluation).

- random reals: ``ipc`` random train images per class for a seed (``class_balanced_subset``);
- centroids: per class, the train image whose (eval-view, raw) embedding is nearest in L2 to the
  class-mean embedding, one per class as the reference hard-codes;
- neighbors: per distilled image, the train image of the same class whose embedding (with the
  distilling backbone) has the largest cosine similarity to the distilled image's embedding.

All return indices into the train split; the stage stores the chosen images as image sets.
The full-dataset probe lives in the stage (it trains on the whole split).
"""

from __future__ import annotations

import numpy as np

from ddjax.data.subsets import class_balanced_subset
from ddjax.errors import DdjaxError


def random_real_indices(labels: np.ndarray, ipc: int, seed: int) -> np.ndarray:
    """``ipc`` train images of every class, drawn with ``seed``, grouped by class."""
    return class_balanced_subset(labels, ipc, seed)


def centroid_indices(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """For each class c (in order), argmin_i ||f_i - mean_c(f)||_2 over the images of class c."""
    features = np.asarray(features, np.float64)
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise DdjaxError(f"class {c} has no train images; cannot pick its centroid")
        class_features = features[members]
        distances = np.linalg.norm(class_features - class_features.mean(axis=0), axis=1)
        picks.append(members[int(np.argmin(distances))])
    return np.asarray(picks, np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbor_indices(set_features: np.ndarray, set_labels: np.ndarray, train_features: np.ndarray,
                     train_labels: np.ndarray) -> np.ndarray:
    """For each set image, the same-class train image of largest cosine similarity."""
    queries, bank = _unit(set_features), _unit(train_features)
    picks = []
    for query, label in zip(queries, set_labels):
        members = np.flatnonzero(train_labels == label)
        if len(members) == 0:
            raise DdjaxError(f"class {label} has no train images; cannot pick a neighbor")
        picks.append(members[int(np.argmax(bank[members] @ query))])
    return np.asarray(picks, np.int64)
