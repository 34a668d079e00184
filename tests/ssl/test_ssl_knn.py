"""Weighted k-NN monitor: against a direct numpy vote, and on easy/impossible synthetic data."""

import numpy as np
import pytest

from ddjax.ssl.knn import knn_accuracy, knn_predict


def knn_reference(train, train_labels, test, k, temperature, num_classes):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    preds = []
    for q in test:
        sims = train @ q
        nearest = np.argsort(-sims, kind="stable")[:k]
        scores = np.zeros(num_classes)
        for i in nearest:
            scores[train_labels[i]] += np.exp(sims[i] / temperature)
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


def test_knn_predictions_match_a_direct_weighted_vote():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=60)
    test = rng.normal(size=(23, 8)).astype(np.float32)
    for k, temperature in [(5, 0.1), (20, 0.5)]:
        # chunk_size 7 forces several chunks and a padded last one
        got = knn_predict(train, labels, test, k=k, temperature=temperature, chunk_size=7)
        np.testing.assert_array_equal(got, knn_reference(train, labels, test, k, temperature, 4))


def test_knn_is_near_perfect_on_clusters_and_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 32)) * 5
    train_labels = rng.integers(0, 10, size=2000)
    test_labels = rng.integers(0, 10, size=500)
    train = centres[train_labels] + rng.normal(size=(2000, 32))
    test = centres[test_labels] + rng.normal(size=(500, 32))
    assert knn_accuracy(train, train_labels, test, test_labels, k=200, temperature=0.1) > 0.99
    # Labels that carry no information about the features: accuracy is at chance (1/10).
    random_train = rng.integers(0, 10, size=2000)
    random_test = rng.integers(0, 10, size=500)
    chance = knn_accuracy(train, random_train, test, random_test, k=200, temperature=0.1)
    assert chance == pytest.approx(0.1, abs=0.05)


def test_k_larger_than_the_training_set_uses_all_of_it():
    train = np.eye(3, dtype=np.float32)
    query = np.array([[1.0, 0.0, 0.0]], np.float32)
    got = knn_predict(train, np.array([0, 1, 1]), query, k=50, temperature=0.1)
    assert got.tolist() == [0]
