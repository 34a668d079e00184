"""Barlow Twins and NT-Xent against direct loop formulas, and their invariances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.ssl.losses import barlow_twins_loss, cross_correlation, nt_xent_loss


def barlow_reference(z1, z2, lambd, eps=1e-5):
    """Double-loop Barlow Twins in float64: BatchNorm1d(affine=False) training-mode statistics."""
    b, d = z1.shape

    def standardise(z):
        out = np.empty_like(z, dtype=np.float64)
        for j in range(d):
            col = z[:, j].astype(np.float64)
            mean = sum(col) / b
            var = sum((v - mean) ** 2 for v in col) / b
            out[:, j] = (col - mean) / math.sqrt(var + eps)
        return out

    a, c = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[n, i] * c[n, j] for n in range(b)) / b
            loss += (1.0 - cij) ** 2 if i == j else lambd * cij**2
    return loss


def nt_xent_reference(z1, z2, temperature):
    """Per-anchor loop: -log softmax of the positive among the 2B-1 other projections."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n = z.shape[0]
    b = n // 2
    unit = [v / np.sqrt(np.dot(v, v)) for v in z]
    total = 0.0
    for a in range(n):
        positive = a + b if a < b else a - b
        denom = sum(math.exp(np.dot(unit[a], unit[k]) / temperature) for k in range(n) if k != a)
        total += -math.log(math.exp(np.dot(unit[a], unit[positive]) / temperature) / denom)
    return total / n


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_matches_loop_formula(lambd):
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(7, 5)).astype(np.float32) * 2 + 1
    z2 = (0.6 * z1 + rng.normal(size=(7, 5))).astype(np.float32)
    got = float(barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2), lambd))
    assert got == pytest.approx(barlow_reference(z1, z2, lambd), rel=1e-5)
    scaled = float(barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2), lambd, scale=0.1))
    assert scaled == pytest.approx(0.1 * got, rel=1e-6)


def decorrelated_batch():
    """8 x 7: Hadamard columns except the constant one (zero mean, unit variance, orthogonal)."""
    h = np.array([[1.0]])
    for _ in range(3):
        h = np.block([[h, h], [h, -h]])
    return h[:, 1:].astype(np.float32)


def test_barlow_twins_is_minimal_for_identical_decorrelated_views():
    z = decorrelated_batch()
    c = np.asarray(cross_correlation(jnp.asarray(z), jnp.asarray(z)))
    np.testing.assert_allclose(c, np.eye(7), atol=1e-4)
    assert float(barlow_twins_loss(jnp.asarray(z), jnp.asarray(z))) < 1e-6
    # Any mismatch between the views costs: shuffled rows, or a second view with redundant dims.
    shuffled = z[np.roll(np.arange(8), 1)]
    assert float(barlow_twins_loss(jnp.asarray(z), jnp.asarray(shuffled))) > 1.0
    redundant = np.repeat(z[:, :1], 7, axis=1)
    assert float(barlow_twins_loss(jnp.asarray(redundant), jnp.asarray(redundant), 0.0051)) > 0.1


def test_barlow_twins_ignores_per_dimension_affine_rescaling():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(16, 6)).astype(np.float32)
    z2 = rng.normal(size=(16, 6)).astype(np.float32)
    scale = rng.uniform(0.5, 3.0, size=6).astype(np.float32)
    shift = rng.normal(size=6).astype(np.float32)
    base = float(barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2)))
    moved = float(barlow_twins_loss(jnp.asarray(z1 * scale + shift), jnp.asarray(z2)))
    assert moved == pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_per_anchor_loop(temperature):
    rng = np.random.default_rng(2)
    z1 = rng.normal(size=(5, 4)).astype(np.float32)
    z2 = (z1 + 0.7 * rng.normal(size=(5, 4))).astype(np.float32)
    got = float(nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2), temperature))
    assert got == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_prefers_matched_pairs_and_ignores_norms():
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(32, 16)).astype(np.float32)
    z2 = z1 + 0.1 * rng.normal(size=(32, 16)).astype(np.float32)
    matched = float(nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2)))
    shuffled = float(nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2[rng.permutation(32)])))
    assert matched < shuffled - 1.0
    # Cosine similarity: per-row rescaling of the projections does not change the loss.
    row_scale = rng.uniform(0.1, 10.0, size=(32, 1)).astype(np.float32)
    rescaled = float(nt_xent_loss(jnp.asarray(z1 * row_scale), jnp.asarray(z2)))
    assert rescaled == pytest.approx(matched, rel=1e-5)
    # Chance level for unrelated views is about log(2B - 1).
    assert shuffled == pytest.approx(math.log(63), rel=0.1)


def test_losses_have_finite_gradients_under_jit():
    z = jnp.asarray(decorrelated_batch())
    for loss in (barlow_twins_loss, nt_xent_loss):
        g1, g2 = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, z)
        assert np.all(np.isfinite(np.asarray(g1))) and np.all(np.isfinite(np.asarray(g2)))
