"""map_batches against a plain loop over the rows, on sizes around the batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models.batched import map_batches

BATCH = 4
SIZES = [1, 3, BATCH, 2 * BATCH, 2 * BATCH + 1]  # n < batch, n = k * batch, n = k * batch + 1


def _rows(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


@pytest.mark.parametrize("n", SIZES)
def test_padded_batches_match_a_plain_loop_with_one_compiled_shape(n):
    x = _rows(n)
    traced = []

    @jax.jit
    def fn(batch):
        traced.append(batch.shape)
        return jnp.tanh(batch) * 2.0

    seen = []

    def take(idx):
        seen.append(idx)
        return x[idx]

    got = map_batches(fn, n, BATCH, take)
    want = np.stack([np.tanh(row) * 2.0 for row in x])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (n, 3) and traced == [(BATCH, 3)]
    assert all(len(idx) == BATCH for idx in seen)
    rows = np.concatenate(seen)
    np.testing.assert_array_equal(rows[:n], np.arange(n))
    assert np.all(rows[n:] == n - 1)  # padding repeats the last row


@pytest.mark.parametrize("n", SIZES)
def test_seed_axis_and_exact_batches(n):
    """Results [S, B, D] cut and joined on axis 1; without padding the last batch is exact."""
    x = _rows(n, seed=1)
    scale = np.array([1.0, -2.0], np.float32)[:, None, None]  # two "seeds"
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        return scale * batch[None]

    want = np.stack([scale[s, 0] * x for s in range(2)])
    np.testing.assert_allclose(map_batches(fn, n, BATCH, lambda idx: x[idx], axis=1), want)
    assert set(sizes) == {BATCH}
    sizes.clear()
    got = map_batches(fn, n, BATCH, lambda idx: x[idx], axis=1, pad=False, desc="test")
    np.testing.assert_allclose(got, want)
    assert sum(sizes) == n and all(s == BATCH for s in sizes[:-1])


def test_pytree_inputs_and_bad_arguments():
    x, y = _rows(5), _rows(5, seed=2)
    got = map_batches(lambda xy: xy[0] - xy[1], 5, 2, lambda idx: (x[idx], y[idx]))
    np.testing.assert_allclose(got, x - y)
    with pytest.raises(DdjaxError, match="batch size must be >= 1"):
        map_batches(lambda b: b, 5, 0, lambda idx: x[idx])
    with pytest.raises(ValueError, match="at least one row"):
        map_batches(lambda b: b, 0, 2, lambda idx: x[idx])
