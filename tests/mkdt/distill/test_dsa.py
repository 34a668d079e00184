"""DSA: each op against an independent NCHW computation with forced parameters, the key →
parameter contract (siamese, mode 'S' choice), identities, and gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.mkdt import dsa
from ddjax.mkdt.dsa import DSA_STRATEGY, DsaParams, apply_dsa, dsa_augment, sample_dsa
from ddjax.errors import DdjaxError

GROUPS = DSA_STRATEGY.split("_")

SHAPE = (3, 8, 6, 2)  # one non-square shape almost everywhere: eager op compiles are shared

# Mode 'S' with several groups runs a lax.switch, which retraces on every eager call: jit it once.
aug_jit = jax.jit(dsa_augment, static_argnames=("params", "strategy"))


def _images(shape=SHAPE, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------
# Independent NCHW computations of the reference's ops


def _np_color(x, ub, us, uc, p):
    x = x + (ub[:, None, None, None] - 0.5) * p.brightness
    m = x.mean(axis=1, keepdims=True)
    x = (x - m) * (us[:, None, None, None] * p.saturation) + m
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - m) * (uc[:, None, None, None] + p.contrast) + m


def _np_crop(x, th, tw):
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.empty_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                r = min(max(i + th[b] + 1, 0), h + 1)
                q = min(max(j + tw[b] + 1, 0), w + 1)
                out[b, :, i, j] = padded[b, :, r, q]
    return out


def _np_cutout(x, oh, ow, ch, cw):
    n, c, h, w = x.shape
    mask = np.ones((n, h, w), x.dtype)
    for b in range(n):
        for a in range(ch):
            for d in range(cw):
                r = min(max(a + oh[b] - ch // 2, 0), h - 1)
                q = min(max(d + ow[b] - cw // 2, 0), w - 1)
                mask[b, r, q] = 0
    return x * mask[:, None]


def _np_affine(x, theta, align_corners):
    """affine_grid + grid_sample (bilinear, zeros) written pixel by pixel."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)

    def base(k, size):
        if size == 1:
            return 0.0
        v = -1 + 2 * k / (size - 1)
        return v if align_corners else v * (size - 1) / size

    def unnorm(g, size):
        return (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2

    for b in range(n):
        for i in range(h):
            for j in range(w):
                xn, yn = base(j, w), base(i, h)
                gx = theta[b, 0, 0] * xn + theta[b, 0, 1] * yn + theta[b, 0, 2]
                gy = theta[b, 1, 0] * xn + theta[b, 1, 1] * yn + theta[b, 1, 2]
                px, py = unnorm(gx, w), unnorm(gy, h)
                x0, y0 = math.floor(px), math.floor(py)
                for yy in (y0, y0 + 1):
                    for xx in (x0, x0 + 1):
                        if 0 <= xx < w and 0 <= yy < h:
                            wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                            out[b, :, i, j] += wgt * x[b, :, yy, xx]
    return out


def _theta_scale(sx, sy):
    return np.array([[[a, 0, 0], [0, b, 0]] for a, b in zip(sx, sy)], np.float64)


def _theta_rotate(angle):
    return np.array([[[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0]]
                     for t in angle], np.float64)


# ---------------------------------------------------------------------------------------------
# Ops with forced parameters


def test_color_matches_numpy():
    p = DsaParams()
    x = _images()
    ub, us, uc = (np.array(v, np.float32)
                  for v in ([0.0, 0.9, 0.3], [0.1, 0.5, 0.99], [0.7, 0.0, 0.4]))
    got = dsa._apply_color(jnp.asarray(x), ub, us, uc, p)
    want = _nhwc(_np_color(_nchw(x), ub, us, uc, p))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_crop_matches_numpy_including_out_of_range_shifts():
    x = _images((4,) + SHAPE[1:])
    th = np.array([0, 1, -2, 9])  # 9 > H: all zeros
    tw = np.array([0, -1, 3, 0])
    got = np.asarray(dsa._apply_crop(jnp.asarray(x), jnp.asarray(th), jnp.asarray(tw)))
    np.testing.assert_array_equal(got, _nhwc(_np_crop(_nchw(x), th, tw)))
    np.testing.assert_array_equal(got[0], x[0])  # zero translation is the identity
    # rows of image 1 move up by one: out[i] = x[i + 1], the last row comes from the border
    np.testing.assert_array_equal(got[1, :-1, 1:], x[1, 1:, :-1])
    assert np.all(got[1, -1] == 0) and np.all(got[3] == 0)


@pytest.mark.parametrize("hw,ratio", [((8, 6), 0.5), ((7, 5), 0.5), ((8, 8), 0.3)])
def test_cutout_matches_numpy_at_edges(hw, ratio):
    h, w = hw
    ch, cw = dsa.cutout_size(h, ratio), dsa.cutout_size(w, ratio)
    max_h, max_w = h - ch % 2, w - cw % 2  # the reference's inclusive offset range
    oh = np.array([0, max_h, h // 2, 1])
    ow = np.array([max_w, 0, w // 2, 2])
    x = _images((4, h, w, 3))
    got = np.asarray(dsa._apply_cutout(jnp.asarray(x), jnp.asarray(oh), jnp.asarray(ow), ch, cw))
    np.testing.assert_array_equal(got, _nhwc(_np_cutout(_nchw(x), oh, ow, ch, cw)))
    assert (got == 0).any(axis=-1).sum() > 0


def test_flip_matches_numpy():
    x = _images()
    flip = np.array([True, False, True])
    got = np.asarray(dsa._apply_flip(jnp.asarray(x), jnp.asarray(flip)))
    want = np.where(flip[:, None, None, None], np.flip(_nchw(x), axis=3), _nchw(x))
    np.testing.assert_array_equal(got, _nhwc(want))


_SX, _SY = np.array([1.2, 0.85, 1.0]), np.array([0.9, 1.13, 1.0])
_ANGLE = np.array([0.25, -0.2, 0.0])


@pytest.mark.parametrize("align_corners", [True, False])
def test_scale_rotate_match_numpy_sampler(align_corners):
    x = _images(dtype=np.float64)
    with jax.enable_x64(True):
        xs = jnp.asarray(x)
        got_s = dsa._apply_scale(xs, jnp.asarray(_SX), jnp.asarray(_SY), align_corners)
        got_r = dsa._apply_rotate(xs, jnp.asarray(_ANGLE), align_corners)
        assert got_s.dtype == jnp.float64
    want_s = _np_affine(_nchw(x), _theta_scale(_SX, _SY), align_corners)
    want_r = _np_affine(_nchw(x), _theta_rotate(_ANGLE), align_corners)
    np.testing.assert_allclose(np.asarray(got_s), _nhwc(want_s), atol=1e-12)
    np.testing.assert_allclose(np.asarray(got_r), _nhwc(want_r), atol=1e-12)


@pytest.mark.parametrize("align_corners", [True, False])
def test_scale_rotate_match_torch(align_corners):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _images(dtype=np.float64)
    xt = torch.from_numpy(_nchw(x).copy())

    def ref(theta):
        grid = F.affine_grid(torch.from_numpy(theta), list(xt.shape), align_corners=align_corners)
        out = F.grid_sample(xt, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=align_corners)
        return _nhwc(out.numpy())

    with jax.enable_x64(True):
        xs = jnp.asarray(x)
        got_s = np.asarray(dsa._apply_scale(xs, jnp.asarray(_SX), jnp.asarray(_SY), align_corners))
        got_r = np.asarray(dsa._apply_rotate(xs, jnp.asarray(_ANGLE), align_corners))
    np.testing.assert_allclose(got_s, ref(_theta_scale(_SX, _SY)), atol=1e-10)
    np.testing.assert_allclose(got_r, ref(_theta_rotate(_ANGLE)), atol=1e-10)


def test_identity_parameters_return_input():
    x = jnp.asarray(_images())
    ones, zeros = jnp.ones(3), jnp.zeros(3)
    np.testing.assert_allclose(dsa._apply_scale(x, ones, ones), x, atol=1e-5)
    np.testing.assert_allclose(dsa._apply_rotate(x, zeros), x, atol=1e-5)
    izeros = jnp.zeros(3, jnp.int32)
    np.testing.assert_array_equal(dsa._apply_crop(x, izeros, izeros), x)
    np.testing.assert_array_equal(dsa._apply_flip(x, jnp.zeros(3, bool)), x)


# ---------------------------------------------------------------------------------------------
# Sampling: ranges, key contract, modes


def test_defaults_are_mtts_parameters_end_to_end():
    assert DsaParams() == DsaParams(
        aug_mode="S", prob_flip=0.5, ratio_scale=1.2, ratio_rotate=15.0, ratio_crop_pad=0.125,
        ratio_cutout=0.5, brightness=1.0, saturation=2.0, contrast=0.5, align_corners=True,
        batch_shared=False)
    # the sampled angle reaches the resampler with MTT's align_corners=True
    x = _images()
    key = jax.random.key(2)
    angle = np.asarray(sample_dsa(key, x.shape, DsaParams(), "rotate").ops[0]["angle"], np.float64)
    want = _nhwc(_np_affine(_nchw(x).astype(np.float64), _theta_rotate(angle), True))
    np.testing.assert_allclose(dsa_augment(key, jnp.asarray(x), strategy="rotate"), want, atol=1e-5)


def test_sampled_parameters_follow_reference_ranges():
    p = DsaParams(aug_mode="M")
    n, h, w = 2000, 32, 16
    draw = sample_dsa(jax.random.key(3), (n, h, w, 3), p, DSA_STRATEGY)
    ops = dict(zip(GROUPS, draw.ops))
    sh, sw = dsa.crop_shift(h, p.ratio_crop_pad), dsa.crop_shift(w, p.ratio_crop_pad)
    assert (sh, sw) == (4, 2)
    assert set(np.asarray(ops["crop"]["t_h"]).tolist()) == set(range(-sh, sh + 1))
    assert set(np.asarray(ops["crop"]["t_w"]).tolist()) == set(range(-sw, sw + 1))
    ch, cw = dsa.cutout_size(h, p.ratio_cutout), dsa.cutout_size(w, p.ratio_cutout)
    assert (ch, cw) == (16, 8)
    assert set(np.asarray(ops["cutout"]["o_h"]).tolist()) == set(range(0, h + 1))  # even: [0, H]
    assert set(np.asarray(ops["cutout"]["o_w"]).tolist()) == set(range(0, w + 1))
    for name in ("sx", "sy"):
        s = np.asarray(ops["scale"][name])
        assert s.min() >= 1 / 1.2 and s.max() < 1.2 and s.min() < 0.85 and s.max() > 1.18
    angle = np.degrees(np.asarray(ops["rotate"]["angle"]))
    assert angle.min() >= -15 and angle.max() < 15 and angle.min() < -14.5 and angle.max() > 14.5
    assert abs(np.asarray(ops["flip"]["flip"]).mean() - 0.5) < 0.05
    for name in ("brightness", "saturation", "contrast"):
        u = np.asarray(ops["color"][name])
        assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.03
    # odd cutout side: offsets in [0, H - 1]
    odd = sample_dsa(jax.random.key(4), (n, 7, 7, 1), p, "cutout").ops[0]
    assert dsa.cutout_size(7, 0.5) == 4  # int(3.5 + 0.5)
    odd3 = sample_dsa(jax.random.key(4), (n, 6, 6, 1), p, "cutout").ops[0]
    assert dsa.cutout_size(6, 0.5) == 3
    assert set(np.asarray(odd["o_h"]).tolist()) == set(range(0, 8))
    assert set(np.asarray(odd3["o_h"]).tolist()) == set(range(0, 6))


def test_siamese_same_key_same_transform_on_different_batches():
    key = jax.random.key(11)
    a, b = jnp.asarray(_images(seed=1)), jnp.asarray(_images(seed=2))
    for group in GROUPS:
        draw = sample_dsa(key, a.shape, DsaParams(), group)
        for batch in (a, b):
            got = dsa_augment(key, batch, DsaParams(), group)
            np.testing.assert_array_equal(got, apply_dsa(batch, draw, DsaParams(), group))
    # a linear op applied with one key commutes with sums of batches: same per-image transform
    geo = "scale_rotate_crop_cutout_flip"
    for k in range(4):
        key = jax.random.key(k)
        lhs = dsa_augment(key, a + 2 * b, DsaParams(aug_mode="M"), geo)
        rhs = dsa_augment(key, a, DsaParams(aug_mode="M"), geo) + 2 * dsa_augment(
            key, b, DsaParams(aug_mode="M"), geo)
        np.testing.assert_allclose(lhs, rhs, atol=1e-5)


def test_different_keys_give_different_outputs():
    x = jnp.asarray(_images())
    p = DsaParams(aug_mode="M")
    outs = [np.asarray(dsa_augment(jax.random.key(k), x, p)) for k in range(3)]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
    np.testing.assert_array_equal(outs[0], dsa_augment(jax.random.key(0), x, p))
    for group in GROUPS:  # per-image parameters differ within a batch
        ops = sample_dsa(jax.random.key(5), (64, 32, 32, 3), p, group).ops[0]
        assert all(len(np.unique(np.asarray(v))) > 1 for v in ops.values())


def test_mode_s_chooses_groups_uniformly():
    keys = jax.random.split(jax.random.key(0), 1200)
    counts = np.bincount(np.asarray(jax.vmap(dsa.dsa_choice)(keys)), minlength=6)
    assert counts.sum() == 1200 and counts.min() > 150 and counts.max() < 250, counts


def test_mode_s_applies_exactly_the_chosen_group_and_mode_m_all_in_order():
    x = jnp.asarray(_images())
    s_params = DsaParams()
    seen = set()
    for k in range(12):
        key = jax.random.key(k)
        draw = sample_dsa(key, x.shape, s_params, DSA_STRATEGY)
        c = int(draw.choice)
        assert c == int(dsa.dsa_choice(key, DSA_STRATEGY))
        seen.add(c)
        want = dsa._apply_group(GROUPS[c], x, draw.ops[c], s_params)
        np.testing.assert_allclose(aug_jit(key, x, s_params), want, atol=1e-5)
        # a group's parameters do not depend on the rest of the strategy
        alone = sample_dsa(key, x.shape, s_params, GROUPS[c]).ops[0]
        for name, v in alone.items():
            np.testing.assert_array_equal(v, draw.ops[c][name])
    assert len(seen) >= 4
    m_params = DsaParams(aug_mode="M")
    key = jax.random.key(99)
    draw = sample_dsa(key, x.shape, m_params, DSA_STRATEGY)
    want = x
    for group, op in zip(GROUPS, draw.ops):
        want = dsa._apply_group(group, want, op, m_params)
    got = dsa_augment(key, x, m_params)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # order matters (the color means see the cutout zeros): reversed order differs
    rev = x
    for group, op in reversed(list(zip(GROUPS, draw.ops))):
        rev = dsa._apply_group(group, rev, op, m_params)
    assert not np.allclose(got, rev, atol=1e-3)


def test_mode_m_repeated_group_draws_fresh_parameters():
    draw = sample_dsa(jax.random.key(2), (16, 8, 8, 1), DsaParams(aug_mode="M"), "rotate_rotate")
    assert not np.allclose(draw.ops[0]["angle"], draw.ops[1]["angle"])


def test_batch_shared_uses_one_transform_for_all_images():
    p = DsaParams(aug_mode="M", batch_shared=True)
    draw = sample_dsa(jax.random.key(1), SHAPE, p, DSA_STRATEGY)
    for op in draw.ops:
        for v in op.values():
            assert len(np.unique(np.asarray(v))) == 1
    small = sample_dsa(jax.random.key(1), (1,) + SHAPE[1:], p, DSA_STRATEGY)
    for op, op_small in zip(draw.ops, small.ops):
        for name in op:
            assert np.asarray(op[name])[0] == np.asarray(op_small[name])[0]


def test_none_strategy_and_bad_arguments():
    x = jnp.asarray(_images())
    for strategy in ("none", "None", ""):
        assert dsa_augment(jax.random.key(0), x, strategy=strategy) is x
    with pytest.raises(DdjaxError, match="unknown DSA"):
        dsa_augment(jax.random.key(0), x, strategy="color_blur")
    with pytest.raises(DdjaxError, match="aug_mode"):
        dsa_augment(jax.random.key(0), x, DsaParams(aug_mode="X"))


# ---------------------------------------------------------------------------------------------
# jit and gradients


def test_grad_under_jit_is_finite():
    x = jnp.asarray(_images())
    grad = jax.jit(jax.grad(lambda im, key: jnp.sum(jnp.sin(dsa_augment(key, im)))))
    for k in range(3):
        g = grad(x, jax.random.key(k))
        assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_grad_matches_finite_difference_float64():
    p, strategy = DsaParams(aug_mode="M"), "scale_rotate_color"
    with jax.enable_x64(True):
        x = jnp.asarray(_images(dtype=np.float64))
        weights = jnp.asarray(_images(seed=5, dtype=np.float64))
        key = jax.random.key(3)

        def f(im):
            return jnp.sum(weights * dsa_augment(key, im, p, strategy) ** 2)

        value_and_grad = jax.jit(jax.value_and_grad(f))  # one compile serves f and its gradient
        _, grad = value_and_grad(x)
        assert float(jnp.abs(grad).sum()) > 0
        rng = np.random.default_rng(0)
        for _ in range(3):
            v = jnp.asarray(rng.normal(size=x.shape))
            eps = 1e-6
            fd = (value_and_grad(x + eps * v)[0] - value_and_grad(x - eps * v)[0]) / (2 * eps)
            np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-7, atol=1e-9)
