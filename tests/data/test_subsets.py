"""Seeded subsets: faithful to the reference's random.sample, reproducible, exact counts."""

import random

import numpy as np
import pytest

from ddjax.data import class_balanced_subset, label_fraction_indices, random_subset
from ddjax.errors import DdjaxError


@pytest.mark.parametrize("n,frac,seed", [(50000, 0.01, 0), (50000, 0.05, 1), (1000, 0.5, 2)])
def test_label_fraction_matches_seeded_random_sample(n, frac, seed):
    state = random.getstate()
    try:
        random.seed(seed)  # what the reference does before random.sample
        expected = random.sample(range(n), int(n * frac))
    finally:
        random.setstate(state)
    got = label_fraction_indices(n, frac, seed)
    assert got.tolist() == expected
    assert got.dtype == np.int64


def test_label_fraction_seeds_differ_and_leave_global_random_alone():
    state = random.getstate()
    a = label_fraction_indices(1000, 0.1, 0)
    assert random.getstate() == state
    assert a.tolist() != label_fraction_indices(1000, 0.1, 1).tolist()
    assert len(set(a.tolist())) == 100


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5])
def test_label_fraction_outside_unit_interval_is_an_error(frac):
    with pytest.raises(DdjaxError, match="label fraction"):
        label_fraction_indices(100, frac, 0)


def test_label_fraction_selecting_nothing_is_an_error():
    with pytest.raises(DdjaxError, match="selects none"):
        label_fraction_indices(10, 0.05, 0)


def test_random_subset_is_reproducible_sorted_and_distinct():
    a = random_subset(1000, 100, seed=3)
    assert np.array_equal(a, random_subset(1000, 100, seed=3))
    assert not np.array_equal(a, random_subset(1000, 100, seed=4))
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert a.min() >= 0 and a.max() < 1000
    assert np.array_equal(random_subset(5, 5, seed=0), np.arange(5))


def test_random_subset_too_large_is_an_error():
    with pytest.raises(DdjaxError, match="cannot draw 11"):
        random_subset(10, 11, seed=0)


def test_class_balanced_subset_counts_are_exact():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    chosen = class_balanced_subset(labels, 7, seed=5)
    assert np.array_equal(labels[chosen], np.repeat(np.arange(4), 7))
    assert len(np.unique(chosen)) == 28
    assert np.array_equal(chosen, class_balanced_subset(labels, 7, seed=5))
    assert not np.array_equal(chosen, class_balanced_subset(labels, 7, seed=6))


def test_class_balanced_subset_more_than_a_class_has_is_an_error():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(DdjaxError, match="class 1 has 2 examples"):
        class_balanced_subset(labels, 3, seed=0)
