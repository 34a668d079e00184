"""Weighted k-NN accuracy: the cheap representation monitor of SSL training.

The classifier of Wu et al. (2018, instance discrimination), used as the training-time monitor
in most SSL code bases: L2-normalise features, take the ``k`` training features with the highest
cosine similarity to a test feature, weight each neighbour's vote for its label by
``exp(similarity / temperature)``, predict the class with the largest total. Defaults k=200 and
temperature 0.1 are that paper's. Test features are processed in chunks so that the similarity
matrix held at once is ``chunk_size x N_train``.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def _l2_normalize(x, eps=1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_predict(train_unit_ND, train_labels_N, test_unit_CD, k, num_classes, temperature):
    sims_CN = jnp.matmul(test_unit_CD, train_unit_ND.T, precision=jax.lax.Precision.HIGHEST)
    top_sims_CK, top_idx_CK = jax.lax.top_k(sims_CN, k)
    weights_CK = jnp.exp(top_sims_CK / temperature)
    votes_CKL = jax.nn.one_hot(train_labels_N[top_idx_CK], num_classes) * weights_CK[..., None]
    return jnp.argmax(jnp.sum(votes_CKL, axis=1), axis=-1)


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: Optional[int] = None,
    chunk_size: int = 256,
) -> np.ndarray:
    """Predicted labels of the test features (int array of length N_test)."""
    train_labels = np.asarray(train_labels).astype(np.int32)
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = int(min(k, train_labels.shape[0]))
    train_unit = _l2_normalize(jnp.asarray(train_features, jnp.float32))
    test_unit = _l2_normalize(jnp.asarray(test_features, jnp.float32))
    n_test = test_unit.shape[0]
    chunk = max(1, min(chunk_size, n_test))
    pad = (-n_test) % chunk
    if pad:  # pad to whole chunks so that every chunk has the same shape (one compilation)
        zeros = jnp.zeros((pad, test_unit.shape[1]), test_unit.dtype)
        test_unit = jnp.concatenate([test_unit, zeros])
    labels_dev = jnp.asarray(train_labels)
    preds = [
        _knn_predict(
            train_unit, labels_dev, test_unit[start : start + chunk], k, num_classes, temperature
        )
        for start in range(0, test_unit.shape[0], chunk)
    ]
    return np.asarray(jnp.concatenate(preds))[:n_test]


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: Optional[int] = None,
    chunk_size: int = 256,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted k-NN classifier."""
    preds = knn_predict(
        train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
    )
    return float(np.mean(preds == np.asarray(test_labels)))
