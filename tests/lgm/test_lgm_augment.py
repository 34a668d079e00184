"""LGM's augmentation ops: exact flips, crops that read the right source pixels (checked against a
pixel-by-pixel grid_sample written in numpy), black outside the image, noise statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.lgm import augment as aug

# Jitted once each: op-by-op dispatch would compile every primitive separately.
augment = jax.jit(aug.augment, static_argnums=2)
sample_aug = jax.jit(aug.sample_aug, static_argnums=(1, 2))


def numpy_grid_sample_crop(img_hwc, box, out):
    """affine_grid + grid_sample(bilinear, zeros, align_corners=False) for theta
    [[w, 0, 2(x1 + w/2) - 1], [0, h, 2(y1 + h/2) - 1]], one pixel at a time."""
    h_in, w_in, _ = img_hwc.shape
    w, h, x1, y1 = box
    result = np.zeros((out, out, img_hwc.shape[2]))
    for i in range(out):
        for j in range(out):
            gx = w * ((2 * j + 1) / out - 1) + 2 * (x1 + w / 2) - 1
            gy = h * ((2 * i + 1) / out - 1) + 2 * (y1 + h / 2) - 1
            px, py = ((gx + 1) * w_in - 1) / 2, ((gy + 1) * h_in - 1) / 2
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < h_in and 0 <= xx < w_in:
                        result[i, j] += wy * wx * img_hwc[yy, xx]
    return result


def test_flip_is_an_exact_mirror_of_the_chosen_images():
    x = jax.random.uniform(jax.random.key(0), (4, 5, 6, 3))
    flip = jnp.array([True, False, True, False])
    out = np.asarray(aug.hflip(x, flip))
    np.testing.assert_array_equal(out[[0, 2]], np.asarray(x)[[0, 2], :, ::-1])
    np.testing.assert_array_equal(out[[1, 3]], np.asarray(x)[[1, 3]])


def test_crop_matches_grid_sample_including_boxes_that_leave_the_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 9, 9, 3)).astype(np.float32)
    boxes = np.array([[0.5, 0.7, 0.1, 0.2], [1.15, 0.9, -0.1, 0.05], [0.3, 0.3, 0.6, 0.0],
                      [1.0, 1.0, 0.0, 0.0]], np.float32)
    got = np.asarray(aug.resized_crop(jnp.asarray(x), jnp.asarray(boxes), 7))
    for n in range(4):
        np.testing.assert_allclose(got[n], numpy_grid_sample_crop(x[n], boxes[n], 7), atol=1e-5)


def test_aligned_crop_reads_exactly_the_source_pixels_and_black_outside():
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
    inside = aug.resized_crop(x, jnp.array([[0.5, 0.5, 0.25, 0.5]]), 4)   # columns 2..5, rows 4..7
    np.testing.assert_allclose(np.asarray(inside[0]), np.asarray(x[0, 4:8, 2:6]), atol=1e-6)
    left_out = aug.resized_crop(x, jnp.array([[1.0, 1.0, -0.5, 0.0]]), 8)  # left half outside
    assert np.all(np.asarray(left_out[0, :, :4]) == 0.0)
    np.testing.assert_allclose(np.asarray(left_out[0, :, 4:]), np.asarray(x[0, :, :4]), atol=1e-6)


def test_crop_box_distribution_follows_the_reference():
    box = np.asarray(jax.jit(aug.sample_crop_boxes, static_argnums=1)(jax.random.key(2), 20000))
    w, h, x1, y1 = box.T
    scale, ratio = w * h, w / h
    assert scale.min() >= 0.08 - 1e-6 and scale.max() <= 1 + 1e-6
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert (w > 1).any() and (x1[w > 1] <= 0).all()                            # no clamping
    assert np.all((x1 >= np.minimum(0, 1 - w) - 1e-6) & (x1 <= np.maximum(0, 1 - w) + 1e-6))
    assert abs(scale.mean() - 0.54) < 0.01


def test_noise_is_n_half_point_two_on_half_the_images_and_basic_has_none():
    n = 2000
    zeros = jnp.zeros((n, 8, 8, 3))
    params = sample_aug(jax.random.key(3), n, "standard")
    out = np.asarray(jax.jit(aug.add_noise)(zeros, params.noise_on, params.noise_keys))
    on = np.asarray(params.noise_on)
    assert abs(on.mean() - 0.5) < 0.04
    assert np.all(out[~on] == 0.0)
    assert abs(out[on].mean() - 0.5) < 0.005 and abs(out[on].std() - 0.2) < 0.005
    assert abs(np.asarray(params.flip).mean() - 0.5) < 0.04
    basic = sample_aug(jax.random.key(3), n, "basic")
    assert not np.asarray(basic.noise_on).any()
    none = sample_aug(jax.random.key(3), 4, "none")
    x = jax.random.uniform(jax.random.key(4), (4, 8, 8, 3))
    np.testing.assert_allclose(np.asarray(augment(x, none, 8)), np.asarray(x), atol=1e-6)


def test_augmenting_a_slice_of_rows_equals_slicing_the_augmented_batch():
    x = jax.random.uniform(jax.random.key(5), (6, 8, 8, 3))
    params = sample_aug(jax.random.key(6), 6, "standard")
    rows = jnp.array([4, 1, 5])
    whole = augment(x, params, 6)[rows]
    part = augment(x[rows], aug.take_rows(params, rows), 6)
    np.testing.assert_allclose(np.asarray(part), np.asarray(whole), atol=1e-6)


def test_center_view_crops_like_torchvision():
    x = jax.random.uniform(jax.random.key(7), (2, 10, 10, 3))
    np.testing.assert_array_equal(np.asarray(aug.center_view(x, 6)), np.asarray(x[:, 2:8, 2:8]))
    assert aug.center_view(x, 12).shape == (2, 12, 12, 3)
