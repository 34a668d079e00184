"""How alike two backbones' embeddings are, and whether that predicts cross-model accuracy.

``mutual_knn_alignment`` is the metric of the platonic representation hypothesis paper (Huh et al.
2024): embed the same n images with both models, L2-normalise, find each image's k nearest other
images (cosine, excluding itself) in each space, and average |N_A(i) ∩ N_B(i)| / k over images.
It is 1 for spaces with identical neighbourhoods and about k / (n - 1) for unrelated ones.

``spearman`` is the rank correlation (Pearson correlation of average ranks) used to compare the
alignment of backbone pairs with LGM's cross-model probe accuracy.
"""

from __future__ import annotations

import numpy as np

from ddjax.errors import DdjaxError


def knn_indices(features: np.ndarray, k: int) -> np.ndarray:
    """[n, k] indices of each row's k most cosine-similar other rows (ties: lower index first)."""
    x = np.asarray(features, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def mutual_knn_alignment(features_a: np.ndarray, features_b: np.ndarray, k: int = 10) -> float:
    """Mean fraction of shared k-nearest neighbours of the same images in two embeddings."""
    n = len(features_a)
    if len(features_b) != n:
        raise DdjaxError(f"alignment needs the same images in both embeddings, got {n} and "
                         f"{len(features_b)}")
    if not 1 <= k < n:
        raise DdjaxError(f"alignment k must be in [1, {n - 1}] for {n} images, got {k}")
    knn_a, knn_b = knn_indices(features_a, k), knn_indices(features_b, k)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(knn_a, knn_b)]
    return float(np.mean(shared) / k)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def spearman(x, y) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y):
        raise DdjaxError(f"rank correlation needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
