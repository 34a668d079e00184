"""The pyramid parameterisation against direct numpy computations and the reference's schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.lgm import pyramid


def numpy_bilinear(img_hwc: np.ndarray, out: int) -> np.ndarray:
    """PyTorch F.interpolate(bilinear, align_corners=False) written pixel by pixel."""
    h, w, _ = img_hwc.shape
    result = np.zeros((out, out, img_hwc.shape[2]))
    for i in range(out):
        sy = max((i + 0.5) * h / out - 0.5, 0.0)
        y0 = int(np.floor(sy))
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(out):
            sx = max((j + 0.5) * w / out - 0.5, 0.0)
            x0 = int(np.floor(sx))
            x1, lx = min(x0 + 1, w - 1), sx - x0
            result[i, j] = ((1 - ly) * ((1 - lx) * img_hwc[y0, x0] + lx * img_hwc[y0, x1])
                            + ly * ((1 - lx) * img_hwc[y1, x0] + lx * img_hwc[y1, x1]))
    return result


def numpy_decode(levels, syn_res, decorrelate):
    m = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    m = m / np.sqrt((m ** 2).sum(axis=0)).max()
    images = []
    for n in range(levels[0].shape[0]):
        pre = sum(numpy_bilinear(np.asarray(level[n], np.float64), syn_res) for level in levels)
        if decorrelate:
            pre = np.einsum("ij,hwj->hwi", m, pre)
        images.append(1.0 / (1.0 + np.exp(-2.0 * pre)))
    return np.stack(images)


def test_colour_matrix_is_normalised_by_its_largest_column_norm():
    expected = np.array([[0.56283, 0.19483, 0.04329], [0.58448, 0.0, -0.10824],
                         [0.58448, -0.19483, 0.06494]])
    np.testing.assert_allclose(pyramid.color_matrix(), expected, atol=2e-5)


@pytest.mark.parametrize("decorrelate", [True, False])
def test_decode_matches_numpy(decorrelate):
    rng = np.random.default_rng(0)
    levels = [rng.normal(size=(2, r, r, 3)).astype(np.float32) for r in (1, 2, 4, 8, 12)]
    got = pyramid.decode([jnp.asarray(x) for x in levels], 12, decorrelate)
    np.testing.assert_allclose(np.asarray(got), numpy_decode(levels, 12, decorrelate), atol=2e-6)
    assert got.shape == (2, 12, 12, 3) and float(got.min()) > 0 and float(got.max()) < 1


def test_float64_levels_decode_in_float64():
    """The colour and upsampling matrices follow the images' dtype: float64 levels decode to
    float64 images equal to the float64 numpy decoding far below float32's resolution."""
    rng = np.random.default_rng(1)
    levels = [rng.normal(size=(2, r, r, 3)) for r in (1, 2, 4, 7)]
    with jax.enable_x64(True):
        got = pyramid.decode([jnp.asarray(x, jnp.float64) for x in levels], 7, True)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), numpy_decode(levels, 7, True), rtol=0, atol=1e-13)
    assert pyramid.color_matrix(np.float64).dtype == np.float64
    assert pyramid.color_matrix().dtype == np.float32


def test_upsample_agrees_with_jax_image_resize():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    np.testing.assert_allclose(pyramid.upsample(x, 16),
                               jax.image.resize(x, (2, 16, 16, 3), "bilinear"), atol=1e-5)


def test_level_resolutions_and_schedule():
    assert pyramid.level_resolutions(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert pyramid.level_resolutions(32) == (1, 2, 4, 8, 16, 32)
    assert pyramid.level_resolutions(28) == (1, 2, 4, 8, 16, 28)
    due = [s for s in range(0, 2001) if pyramid.extension_due(s, 200)]
    assert due == [201, 401, 601, 801, 1001, 1201, 1401, 1601, 1801]   # 1801 finds the pyramid full
    active, during = 1, {}                     # the stage's rule: extend when due and not full
    for s in range(5001):
        if pyramid.extension_due(s, 200) and active < 9:
            active += 1
        during[s] = active
    steps = (0, 1, 200, 201, 1600, 1601, 5000)
    assert [during[s] for s in steps] == [1, 1, 1, 2, 8, 9, 9]


def test_noise_extension_rescales_old_levels_and_adds_scaled_noise():
    levels = pyramid.init_levels(jax.random.key(0), 3, mode="pyramid", syn_res=8)
    assert [lv.shape[1] for lv in levels] == [1, 2, 4, 8] and not np.any(np.asarray(levels[1]))
    levels, active = pyramid.extend_levels(levels, 1, jax.random.key(1))
    before = [np.asarray(x) for x in levels]
    latent_before = np.asarray(pyramid.decode_latent(levels[:2], 8, False))
    levels, active = pyramid.extend_levels(levels, active, jax.random.key(2))
    assert active == 3
    for old, new in zip(before[:2], levels[:2]):
        np.testing.assert_allclose(np.asarray(new), old * 2.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pyramid.decode_latent(levels[:2], 8, False)),
                               latent_before * 2 / 3, rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(levels[3]))


def test_noise_extension_telescopes_to_equal_level_scales():
    first = pyramid.init_levels(jax.random.key(0), 32, mode="pyramid", syn_res=16)
    levels, active = first, 1
    for step in range(5):   # the last call finds the pyramid full and changes nothing
        levels, active = pyramid.extend_levels(levels, active, jax.random.key(10 + step))
    assert active == 5
    np.testing.assert_allclose(np.asarray(levels[0]), np.asarray(first[0]) / 5.0, rtol=1e-5)
    stds = [float(np.std(np.asarray(lv))) for lv in levels[2:]]   # levels with >= 1536 samples
    np.testing.assert_allclose(stds, 1.0 / 5.0, rtol=0.08)


def test_zero_extension_keeps_the_decoded_image_as_the_reference_does():
    rng = np.random.default_rng(1)
    levels = pyramid.init_levels(jax.random.key(0), 2, mode="pyramid", syn_res=8, init="zero")
    levels[0] = jnp.asarray(rng.normal(size=(2, 1, 1, 3)), jnp.float32)
    image = np.asarray(pyramid.decode(levels, 8))
    levels, active = pyramid.extend_levels(levels, 1, jax.random.key(0), init="zero")
    np.testing.assert_allclose(np.asarray(pyramid.decode(levels, 8)), image, atol=1e-6)  # exact
    levels[1] = levels[1] + jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)
    scaled = [np.asarray(x) * 2 / 3 for x in levels[:2]]
    levels, active = pyramid.extend_levels(levels, active, jax.random.key(0), init="zero")
    expected_new = sum(np.stack([numpy_bilinear(x[n], 4) for n in range(2)]) for x in scaled) / 2
    np.testing.assert_allclose(np.asarray(levels[2]), expected_new, atol=1e-5)
    for got, want in zip(levels[:2], scaled):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_pixels_mode_is_one_full_level():
    levels = pyramid.init_levels(jax.random.key(0), 5, mode="pixels", syn_res=16)
    assert len(levels) == 1 and levels[0].shape == (5, 16, 16, 3)
    assert pyramid.extend_levels(levels, 1, jax.random.key(1))[1] == 1
