"""Normalisation, LANCZOS resize and ZCA, checked against direct numpy/PIL computations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ddjax.data import (
    denormalize,
    fit_zca,
    get_spec,
    normalize,
    resize_images,
    zca_digest,
    zca_unwhiten,
    zca_whiten,
)
from ddjax.errors import DdjaxError


@pytest.fixture
def images_u8():
    return np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)


def test_normalize_matches_the_formula(images_u8):
    spec = get_spec("cifar10")
    got = normalize(images_u8, spec.mean, spec.std)
    x = images_u8.astype(np.float64) / 255.0
    expected = np.stack([(x[..., c] - spec.mean[c]) / spec.std[c] for c in range(3)], axis=-1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_denormalize_inverts_normalize_for_numpy_and_jax(images_u8):
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    back = denormalize(normalize(images_u8, mean, std), mean, std) * 255
    np.testing.assert_allclose(back, images_u8, atol=1e-3)
    jax_back = denormalize(normalize(jnp.asarray(images_u8), mean, std), mean, std) * 255
    assert isinstance(jax_back, jax.Array)
    np.testing.assert_allclose(np.asarray(jax_back), images_u8, atol=1e-3)


def test_resize_images_is_per_image_pil_lanczos(images_u8):
    got = resize_images(images_u8, (3, 4))
    assert got.shape == (4, 3, 4, 3) and got.dtype == np.uint8
    for image, resized in zip(images_u8, got):
        expected = np.asarray(Image.fromarray(image).resize((4, 3), resample=Image.LANCZOS))
        np.testing.assert_array_equal(resized, expected)


def test_resize_images_accepts_mixed_sizes_and_keeps_constants():
    flat = [np.full((7, 9, 3), 77, np.uint8), np.full((20, 11, 3), 200, np.uint8)]
    got = resize_images(flat, (5, 5))
    assert got.shape == (2, 5, 5, 3)
    assert np.all(got[0] == 77) and np.all(got[1] == 200)


def _random_images(n=600, shape=(4, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(np.prod(shape), np.prod(shape)))  # correlated, full rank
    return (rng.normal(size=(n, np.prod(shape))) @ mixing + 3.0).reshape(n, *shape)


def test_zca_whiten_then_unwhiten_is_identity():
    x = _random_images().astype(np.float32)
    zca = fit_zca(x, eps=0.1)
    np.testing.assert_allclose(zca_unwhiten(zca_whiten(x, zca), zca), x, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(zca.whiten @ zca.unwhiten, np.eye(48), atol=1e-4)


def test_zca_with_small_eps_whitens_the_covariance():
    x = _random_images()
    white = zca_whiten(x.astype(np.float32), fit_zca(x, eps=1e-8))
    flat = white.reshape(len(white), -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(flat, rowvar=False), np.eye(48), atol=2e-3)


def test_zca_matches_an_svd_of_the_unbiased_covariance():
    x = _random_images(seed=1)
    flat = x.reshape(len(x), -1)
    centred = flat - flat.mean(axis=0)
    cov = centred.T @ centred / (len(x) - 1)
    u, s, _ = np.linalg.svd(cov)
    expected = u @ np.diag(1 / np.sqrt(s + 0.1)) @ u.T
    zca = fit_zca(x, eps=0.1)
    assert zca.whiten.dtype == np.float32
    np.testing.assert_allclose(zca.whiten, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(zca.unwhiten, np.linalg.inv(expected), rtol=1e-4, atol=1e-5)


def test_zca_applies_under_jit_like_numpy():
    x = _random_images(n=100).astype(np.float32)
    zca = fit_zca(x)
    got = jax.jit(zca_whiten)(jnp.asarray(x), jax.tree.map(jnp.asarray, zca))
    np.testing.assert_allclose(np.asarray(got), zca_whiten(x, zca), rtol=1e-4, atol=1e-4)


def test_zca_digest_tracks_the_arrays():
    zca = fit_zca(_random_images(n=100))
    same = fit_zca(_random_images(n=100))
    assert zca_digest(zca) == zca_digest(same)
    assert len(zca_digest(zca)) == 64
    changed_mean = zca.mean.copy()
    changed_mean[0] += 1e-3
    assert zca_digest(dataclasses.replace(zca, mean=changed_mean)) != zca_digest(zca)
    assert zca_digest(fit_zca(_random_images(n=100), eps=0.2)) != zca_digest(zca)


def test_zca_needs_two_images():
    with pytest.raises(DdjaxError, match="at least 2 images"):
        fit_zca(np.zeros((1, 2, 2, 3)))
