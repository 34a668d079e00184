"""SSL view augmentation: shapes, ranges, exact special cases, PIL/colorsys/numpy references."""

import colorsys
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ddjax.ssl import augment as A
from ddjax.ssl.augment import (
    AugmentConfig,
    ViewAugmentConfig,
    augment_batch,
    augment_image,
    make_views,
)

# Every op off: the base for configs that switch on exactly one thing.
NOTHING = AugmentConfig(
    crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0
)

# Shared jitted entry points: tests with the same config and shape reuse one compilation.
views_fn = jax.jit(make_views, static_argnums=2)
batch_fn = jax.jit(augment_batch, static_argnums=2)
crop_fn = jax.jit(A.resized_crop, static_argnums=(5, 6))


def images(n=4, h=16, w=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, h, w, 3)).astype(np.float32))


def close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


@pytest.mark.parametrize(
    "config",
    [
        ViewAugmentConfig.barlow_twins_cifar(),
        ViewAugmentConfig.simclr_cifar(),
        ViewAugmentConfig(
            AugmentConfig(output_size=(12, 20), blur_p=1.0, blur_kernel_size=5, solarize_p=0.5),
            AugmentConfig(output_size=(12, 20), interpolation="bicubic"),
        ),
    ],
)
def test_views_have_the_right_shape_and_range(config):
    x = images()
    v1, v2 = views_fn(jax.random.key(0), x, config)
    size = config.view1.output_size or (16, 16)
    assert v1.shape == v2.shape == (4, *size, 3)
    for v in (v1, v2):
        assert v.dtype == jnp.float32
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not np.allclose(np.asarray(v1), np.asarray(v2))


def test_same_key_same_views_different_key_different_views():
    x = images()
    config = ViewAugmentConfig.barlow_twins_cifar()
    a1, a2 = views_fn(jax.random.key(7), x, config)
    b1, b2 = views_fn(jax.random.key(7), x, config)
    c1, _ = views_fn(jax.random.key(8), x, config)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(b1))
    np.testing.assert_array_equal(np.asarray(a2), np.asarray(b2))
    assert not np.allclose(np.asarray(a1), np.asarray(c1))


def test_batch_is_a_vmap_with_one_key_per_sample():
    x = images()
    config = dataclasses.replace(NOTHING, flip_p=0.5, grayscale_p=0.5)
    key = jax.random.key(3)
    batched = batch_fn(key, x, config)
    keys = jax.random.split(key, 4)
    single = jax.jit(augment_image, static_argnums=2)
    close(batched, np.stack([np.asarray(single(keys[i], x[i], config)) for i in range(4)]), 1e-5)


def test_make_views_uses_one_key_stream_per_view():
    # View v of image n comes from split(split(key)[v], N)[n]; the symmetric fast path included.
    x = images()
    key = jax.random.key(5)
    k1, k2 = jax.random.split(key)
    config = ViewAugmentConfig.simclr_cifar()
    v1, v2 = views_fn(key, x, config)
    close(v1, batch_fn(k1, x, config.view1))
    close(v2, batch_fn(k2, x, config.view2))


def test_forced_flip_mirrors_exactly_and_no_flip_is_identity():
    x = images()
    flipped = batch_fn(jax.random.key(0), x, dataclasses.replace(NOTHING, flip_p=1.0))
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(x)[:, :, ::-1])
    same = batch_fn(jax.random.key(0), x, NOTHING)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


def test_full_image_crop_box_returns_the_input():
    x = images(2, 12, 20)
    ratio = (20 / 12, 20 / 12)
    full = dataclasses.replace(NOTHING, crop=True, crop_scale=(1.0, 1.0), crop_ratio=ratio)
    close(batch_fn(jax.random.key(1), x, full), x)


def pil_resized_crop(img, box, size, pil_filter):
    """PIL's crop-then-resize (what torchvision RandomResizedCrop does on PIL images), mode 'F'."""
    top, left, h, w = box
    channels = [
        Image.fromarray(img[..., c], mode="F")
        .crop((left, top, left + w, top + h))
        .resize(size[::-1], pil_filter)
        for c in range(img.shape[-1])
    ]
    return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0, 1)


@pytest.mark.parametrize(
    "interpolation,pil", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)]
)
@pytest.mark.parametrize(
    "box,size",
    [
        ((2, 3, 9, 11), (20, 16)),  # enlarge
        ((1, 2, 15, 20), (8, 10)),  # shrink (antialiased kernel)
        ((5, 5, 3, 4), (16, 16)),
        ((0, 0, 17, 23), (17, 23)),  # the full image at its own size
    ],
)
def test_resized_crop_matches_pil_crop_then_resize(interpolation, pil, box, size):
    img = np.random.default_rng(0).random((17, 23, 3)).astype(np.float32)
    ours = crop_fn(img, *box, size, interpolation)
    close(ours, pil_resized_crop(img, box, size, pil), 2e-6)
    if box == (0, 0, 17, 23):
        close(ours, img)


def torchvision_box(rng, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, rewritten with numpy's generator."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    return None


def test_crop_boxes_follow_torchvision_distribution():
    height, width, scale, ratio = 24, 32, (0.08, 1.0), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(0), 4000)
    sample = jax.jit(jax.vmap(lambda k: A.sample_crop_box(k, height, width, scale, ratio)))
    top, left, h, w = (np.asarray(a) for a in sample(keys))
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top + h <= height) and np.all(left + w <= width)
    rng = np.random.default_rng(0)
    ref = np.array([torchvision_box(rng, height, width, scale, ratio) for _ in range(4000)])
    ref_top, ref_h, ref_w = ref[:, 0], ref[:, 2], ref[:, 3]
    for ours, theirs in [(h * w, ref_h * ref_w), (w / h, ref_w / ref_h), (top, ref_top)]:
        assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.05)
        assert np.std(ours) == pytest.approx(np.std(theirs), rel=0.08)


def test_crop_falls_back_to_a_centre_crop_like_torchvision():
    # No candidate can fit (area > image), so torchvision's fallback applies.
    wide = A.sample_crop_box(jax.random.key(0), 10, 40, (2.0, 3.0), (3 / 4, 4 / 3))
    assert tuple(int(v) for v in wide) == (0, (40 - 13) // 2, 10, 13)
    square = A.sample_crop_box(jax.random.key(0), 16, 16, (2.0, 3.0), (3 / 4, 4 / 3))
    assert tuple(int(v) for v in square) == (0, 0, 16, 16)


def test_grayscale_uses_itu_r_601_weights():
    x = images()
    out = np.asarray(batch_fn(jax.random.key(0), x, dataclasses.replace(NOTHING, grayscale_p=1.0)))
    xn = np.asarray(x)
    luma = 0.299 * xn[..., 0] + 0.587 * xn[..., 1] + 0.114 * xn[..., 2]
    for c in range(3):
        close(out[..., c], luma)


def test_colour_jitter_with_zero_strengths_is_identity():
    x = images()
    zero = dataclasses.replace(
        NOTHING, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
    )
    np.testing.assert_array_equal(np.asarray(batch_fn(jax.random.key(0), x, zero)), np.asarray(x))
    # The jitter maths itself is the identity at factor 1 and hue shift 0.
    img = x[0]
    close(A.adjust_brightness(img, 1.0), img)
    close(A.adjust_contrast(img, 1.0), img)
    close(A.adjust_saturation(img, 1.0), img)
    close(A.adjust_hue(img, 0.0), img)


def test_colour_ops_match_torchvision_formulas():
    img = np.random.default_rng(4).random((5, 6, 3)).astype(np.float32)
    luma = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    close(A.adjust_brightness(img, 1.3), np.clip(1.3 * img, 0, 1))
    close(A.adjust_contrast(img, 0.6), np.clip(0.6 * img + 0.4 * luma.mean(), 0, 1))
    close(A.adjust_saturation(img, 1.5), np.clip(1.5 * img - 0.5 * luma[..., None], 0, 1))
    for shift in (0.1, -0.23, 0.5):
        ref = np.empty_like(img)
        for i in range(5):
            for j in range(6):
                hh, ss, vv = colorsys.rgb_to_hsv(*img[i, j].astype(np.float64))
                ref[i, j] = colorsys.hsv_to_rgb((hh + shift) % 1.0, ss, vv)
        close(A.adjust_hue(img, shift), ref, 1e-5)


def test_hsv_round_trip_and_gray_pixels():
    img = np.random.default_rng(5).random((8, 8, 3)).astype(np.float32)
    img[0, 0] = 0.3  # gray pixel: undefined hue, zero saturation
    img[0, 1] = 0.0
    hsv = np.asarray(A.rgb_to_hsv(img))
    assert hsv[0, 0, 1] == 0.0 and hsv[0, 1, 2] == 0.0
    close(A.hsv_to_rgb(hsv), img)


def test_brightness_only_jitter_scales_each_image_by_one_factor_in_range():
    x = images(64) * 0.5  # no clipping at factors <= 1.4
    config = dataclasses.replace(
        NOTHING, jitter_p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0
    )
    ratio = (np.asarray(batch_fn(jax.random.key(2), x, config)) / np.asarray(x)).reshape(64, -1)
    np.testing.assert_allclose(ratio, np.repeat(ratio[:, :1], ratio.shape[1], axis=1), rtol=1e-5)
    assert ratio.min() >= 0.6 - 1e-6 and ratio.max() <= 1.4 + 1e-6
    assert ratio[:, 0].std() > 0.1  # factors do vary


def test_random_apply_probabilities():
    x = images(400, 4, 4)
    jitter = dataclasses.replace(NOTHING, jitter_p=0.8, brightness=0.4)
    jittered = np.asarray(batch_fn(jax.random.key(0), x, jitter))
    changed = np.any(jittered != np.asarray(x), axis=(1, 2, 3))
    assert changed.mean() == pytest.approx(0.8, abs=0.06)
    gray = dataclasses.replace(NOTHING, grayscale_p=0.2)
    out = np.asarray(batch_fn(jax.random.key(1), x, gray))
    is_gray = np.all(np.abs(out[..., 0] - out[..., 1]) < 1e-7, axis=(1, 2))
    assert is_gray.mean() == pytest.approx(0.2, abs=0.06)


def test_solarize_and_blur():
    x = images()
    sol = batch_fn(jax.random.key(0), x, dataclasses.replace(NOTHING, solarize_p=1.0))
    xn = np.asarray(x)
    np.testing.assert_array_equal(np.asarray(sol), np.where(xn >= 0.5, 1.0 - xn, xn))
    # Blur against a numpy reflect-padded separable Gaussian with the same sigma.
    img, sigma, k = xn[0], 1.3, 5
    offsets = np.arange(k) - k // 2
    kern = np.exp(-0.5 * (offsets / sigma) ** 2)
    kern /= kern.sum()
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    ref = np.zeros_like(img)
    for i in range(k):
        for j in range(k):
            ref += kern[i] * kern[j] * padded[i : i + 16, j : j + 16]
    close(jax.jit(A.gaussian_blur, static_argnums=2)(jnp.asarray(img), sigma, k), ref, 1e-5)


def test_recipes_are_as_documented():
    bt = ViewAugmentConfig.barlow_twins_cifar()
    v = bt.view1
    assert (v.brightness, v.contrast, v.saturation, v.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (bt.view1.solarize_p, bt.view2.solarize_p) == (0.0, 0.2)
    assert v.crop_scale == (0.08, 1.0) and v.blur_p == 0.0 and v.interpolation == "bilinear"
    sc = ViewAugmentConfig.simclr_cifar()
    assert sc.view1 == sc.view2
    assert sc.view1.saturation == 0.4 and sc.view1.interpolation == "bicubic"
    assert (sc.view1.jitter_p, sc.view1.grayscale_p, sc.view1.flip_p) == (0.8, 0.2, 0.5)
