"""Probe training and scoring, the baselines' picks and the alignment metric, each against a
direct computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax.lgm.step import Probes
from ddjax.lgm import probe as lgm_probe
from ddjax.lgm.alignment import mutual_knn_alignment, spearman
from ddjax.lgm.baselines import centroid_indices, neighbor_indices
from ddjax.data.stream import SplitReader
from lgm_helpers import tiny_backbone


def test_learning_rate_rule_and_cosine_schedule():
    assert lgm_probe.probe_lr(1e-3, 10) == 3.90625e-5
    assert lgm_probe.probe_lr(1e-3, 100) == 3.90625e-4
    assert lgm_probe.cosine_lr(1.0, 0, 1000) == 1.0
    np.testing.assert_allclose(lgm_probe.cosine_lr(1.0, 500, 1000), 0.5)
    np.testing.assert_allclose(lgm_probe.cosine_lr(2.0, 999, 1000),
                               2.0 * (1 + np.cos(np.pi * 0.999)) / 2)


def test_probe_training_on_features_equals_a_plain_loop():
    """7 rows in batches of 3 (3, 3, 1 per epoch), two seeds, against optax.adam step by step."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
    seeds, epochs, lr = [3, 8], 3, 0.05
    probes, _ = lgm_probe.train_probes(features, labels, seeds, num_classes=3, dim=5, epochs=epochs,
                                       batch_size=3, lr=lr)
    for i, seed in enumerate(seeds):
        key = jax.random.key(seed)
        W0 = 0.01 * jax.random.normal(jax.random.fold_in(key, 0), (3, 5))
        params = {"W": W0, "b": jnp.zeros(3)}
        optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
        state = optimizer.init(params)
        for epoch in range(epochs):
            state.hyperparams["learning_rate"] = lgm_probe.cosine_lr(lr, epoch, epochs)
            order_key = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
            order = np.asarray(jax.random.permutation(order_key, 7))
            for start in range(0, 7, 3):
                rows = order[start:start + 3]

                def loss(p):
                    logp = jax.nn.log_softmax(features[rows] @ p["W"].T + p["b"])
                    return -jnp.mean(logp[jnp.arange(len(rows)), labels[rows]])

                updates, state = optimizer.update(jax.grad(loss)(params), state)
                params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(probes.W[i], params["W"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(probes.b[i], params["b"], rtol=1e-4, atol=1e-6)


def test_topk_accuracy_counts_labels_among_the_top_logits():
    W = jnp.asarray(np.eye(4, 3, dtype=np.float32)[None])   # logits: the 3 features, class 3: 0
    probes = Probes(W, jnp.zeros((1, 4)))
    features = np.array([[3, 2, 1], [1, 2, 3], [0, 5, 1]], np.float32)
    labels = np.array([0, 1, 3])
    np.testing.assert_allclose(lgm_probe.topk_accuracy(probes, features, labels, 1), [1 / 3])
    np.testing.assert_allclose(lgm_probe.topk_accuracy(probes, features, labels, 2), [2 / 3])


def test_centroids_and_neighbors_pick_what_the_definitions_say():
    features = np.array([[0, 0], [1, 0], [4, 0], [10, 10], [10, 11], [12, 10], [30, 0]], np.float64)
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    # class 0 mean (5/3, 0): nearest is row 1; class 1 mean (15.5, 7.75): nearest is row 5
    np.testing.assert_array_equal(centroid_indices(features, labels, 2), [1, 5])
    queries = np.array([[1, 0.1], [0, 1], [1, 0]])
    # cosine, same-class rows only: class 1 query (0, 1) -> row 4 (10, 11); (1, 0) -> row 6
    picks = neighbor_indices(queries, np.array([0, 1, 1]), features, labels)
    np.testing.assert_array_equal(picks, [1, 4, 6])


def test_mutual_knn_alignment_and_rank_correlation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert mutual_knn_alignment(a, 3.0 * a @ rotation, k=10) == 1.0          # same neighbourhoods
    unrelated = mutual_knn_alignment(a, rng.normal(size=(200, 16)), k=10)
    assert unrelated < 0.15                                                    # chance is 10 / 199
    # nearest neighbour by cosine: pairs (0, 1), (2, 3) in `near`, pairs (0, 2), (1, 3) in `far`
    near = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    far = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert mutual_knn_alignment(near, near, k=1) == 1.0
    assert mutual_knn_alignment(near, far, k=1) == 0.0
    np.testing.assert_allclose(spearman([1, 2, 3, 4], [1, 3, 2, 4]), 0.8)
    np.testing.assert_allclose(spearman([1, 2, 2, 3], [1, 2, 3, 4]), 0.9486832980505138)
    assert spearman([1, 2], [2, 1]) is None


def test_embedding_rows_read_from_a_source_equals_embedding_them_in_memory():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(11, 16, 16, 3), dtype=np.uint8)
    records = [{"image": image, "label": i % 3} for i, image in enumerate(images)]
    keep = np.array([10, 2, 7, 0, 5, 9, 1, 3])        # the reader's rows: a subset, reordered
    rows = np.array([4, 0, 7, 7, 2])                    # 5 rows in batches of 2: the last padded
    backbone = tiny_backbone()
    got = lgm_probe.embed_rows(backbone, SplitReader(records, keep), rows, batch_size=2)
    want = np.asarray(backbone.embed(images[keep[rows]].astype(np.float32) / 255.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lgm_probe.embed_images(backbone, images[keep[rows]], 2), got)
