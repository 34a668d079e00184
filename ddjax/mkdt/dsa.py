"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as MTT configures it.

Images are NHWC float arrays in whatever space the caller works in (normalised or ZCA-whitened);
every op acts on the given values as the reference's ``DiffAugment`` acts on its NCHW tensors,
is differentiable with respect to the images, and ``dsa_augment`` is pure and jittable
(``params`` and ``strategy`` static). The group formulas are on ``apply_dsa``, the derivation of
the random parameters from the key on ``sample_dsa``. See docs/mkdt.md#modes-mtt-and-mtt-ssl.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ddjax.errors import DdjaxError

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
GROUP_IDS = {"color": 0, "crop": 1, "cutout": 2, "flip": 3, "scale": 4, "rotate": 5}
AUG_MODES = ("S", "M")


@dataclasses.dataclass(frozen=True)
class DsaParams:
    """The reference's ``ParamDiffAug`` defaults plus two switches, ``align_corners`` (on
    ``apply_dsa``) and ``batch_shared`` (on ``sample_dsa``)."""

    aug_mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True  # MTT's value; DC/DSA/DM use PyTorch's default (False)
    batch_shared: bool = False  # True: image 0's parameters for the whole batch (seeded DC/DSA)


class DsaDraw(NamedTuple):
    """Sampled parameters: ``choice`` (mode 'S': the strategy position applied; mode 'M': unused,
    0) and ``ops``, one dict of length-N arrays per strategy position."""

    choice: jax.Array
    ops: tuple[dict[str, jax.Array], ...]


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The strategy's groups in order; () for 'none'/'None'/''. Unknown groups raise."""
    if strategy in ("", "none", "None"):
        return ()
    groups = tuple(strategy.split("_"))
    unknown = [g for g in groups if g not in GROUP_IDS]
    if unknown:
        raise DdjaxError(
            f"unknown DSA augmentation group(s) {unknown} in strategy {strategy!r}; "
            f"use '_'-joined names from {sorted(GROUP_IDS)}"
        )
    return groups


def _check_params(params: DsaParams) -> None:
    if params.aug_mode not in AUG_MODES:
        raise DdjaxError(f"DSA aug_mode must be one of {AUG_MODES}, got {params.aug_mode!r}")


def crop_shift(size: int, ratio: float) -> int:
    """Largest translation of the ``crop`` group along an axis of ``size`` pixels."""
    return int(size * ratio + 0.5)


def cutout_size(size: int, ratio: float) -> int:
    """Side of the ``cutout`` rectangle along an axis of ``size`` pixels."""
    return int(size * ratio + 0.5)


# ---------------------------------------------------------------------------------------------
# Parameter sampling (one function per group; shapes (N,) or (1,) when batch-shared)


def _sample_group(group: str, key: jax.Array, n: int, h: int, w: int, p: DsaParams,
                  dtype) -> dict[str, jax.Array]:
    if group == "color":
        kb, ks, kc = jax.random.split(key, 3)
        return {"brightness": jax.random.uniform(kb, (n,), dtype),
                "saturation": jax.random.uniform(ks, (n,), dtype),
                "contrast": jax.random.uniform(kc, (n,), dtype)}
    if group == "crop":
        kh, kw = jax.random.split(key)
        sh, sw = crop_shift(h, p.ratio_crop_pad), crop_shift(w, p.ratio_crop_pad)
        return {"t_h": jax.random.randint(kh, (n,), -sh, sh + 1),
                "t_w": jax.random.randint(kw, (n,), -sw, sw + 1)}
    if group == "cutout":
        kh, kw = jax.random.split(key)
        ch, cw = cutout_size(h, p.ratio_cutout), cutout_size(w, p.ratio_cutout)
        return {"o_h": jax.random.randint(kh, (n,), 0, h + (1 - ch % 2)),
                "o_w": jax.random.randint(kw, (n,), 0, w + (1 - cw % 2))}
    if group == "flip":
        return {"flip": jax.random.uniform(key, (n,), dtype) < p.prob_flip}
    if group == "scale":
        kx, ky = jax.random.split(key)
        r = p.ratio_scale
        return {"sx": jax.random.uniform(kx, (n,), dtype) * (r - 1.0 / r) + 1.0 / r,
                "sy": jax.random.uniform(ky, (n,), dtype) * (r - 1.0 / r) + 1.0 / r}
    if group == "rotate":
        u = jax.random.uniform(key, (n,), dtype)
        return {"angle": (u - 0.5) * 2 * p.ratio_rotate / 180 * math.pi}
    raise AssertionError(group)


def sample_dsa(key: jax.Array, shape: tuple[int, ...], params: DsaParams = DsaParams(),
               strategy: str = DSA_STRATEGY, dtype=jnp.float32) -> DsaDraw:
    """All random parameters ``dsa_augment`` uses for a batch of ``shape`` (N, H, W, C).

    ``k_choice, k_ops = split(key)``. The group at strategy position ``i`` (mode ``'S'``: the chosen
    one) uses ``k = fold_in(fold_in(k_ops, GROUP_IDS[group]), occ)`` where ``GROUP_IDS`` is the fixed
    table color 0, crop 1, cutout 2, flip 3, scale 4, rotate 5 and ``occ`` is how many earlier
    positions hold the same group in mode ``'M'`` (always 0 in mode ``'S'``), so a group's
    parameters do not depend on which other groups the strategy lists.
    ``k`` is split into one key per draw, in this order: color (u_b, u_s, u_c); crop (t_h, t_w);
    cutout (o_h, o_w); flip (u_f); scale (u_sx, u_sy); rotate (u_φ). Each draw is a vector of length N
    (uniform floats in [0, 1) or uniform integers), element n for image n; mode ``'S'`` draws its
    position as ``randint(k_choice, 0, len(groups))``.

    Siamese property: the parameters are a function of (key, N, H, W, params, strategy) only, so two
    batches of the same shape augmented with the same key (real and synthetic, as DSA uses it) get
    identical transforms, image by image. With ``DsaParams.batch_shared=True`` every image of a batch
    gets image 0's parameters (draws of length 1, broadcast), which is what the DC/DSA/DM code does when
    it is given a seed (its ``param.Siamese``/``batchmode`` flag) and which makes batches of different
    sizes share the same transform. MTT calls ``DiffAugment`` without a seed, i.e. per-image
    parameters, hence the default ``False``.
    """
    _check_params(params)
    groups = parse_strategy(strategy)
    n, h, w = int(shape[0]), int(shape[1]), int(shape[2])
    k_ops = jax.random.split(key)[1]
    n_draw = 1 if params.batch_shared else n
    ops, seen = [], {}
    for g in groups:
        occ = seen.get(g, 0) if params.aug_mode == "M" else 0
        seen[g] = seen.get(g, 0) + 1
        k = jax.random.fold_in(jax.random.fold_in(k_ops, GROUP_IDS[g]), occ)
        drawn = _sample_group(g, k, n_draw, h, w, params, dtype)
        ops.append({name: jnp.broadcast_to(v, (n,)) for name, v in drawn.items()})
    if params.aug_mode == "S" and groups:
        choice = dsa_choice(key, strategy)
    else:
        choice = jnp.zeros((), jnp.int32)
    return DsaDraw(choice, tuple(ops))


def dsa_choice(key: jax.Array, strategy: str = DSA_STRATEGY) -> jax.Array:
    """Mode 'S': the strategy position ``key`` applies (uniform over positions, so a group listed
    twice is twice as likely, as in the reference)."""
    n_groups = len(parse_strategy(strategy))
    if not n_groups:
        raise DdjaxError("DSA strategy 'none' has no group to choose")
    return jax.random.randint(jax.random.split(key)[0], (), 0, n_groups)


# ---------------------------------------------------------------------------------------------
# Application with given parameters (NHWC)


def _per_image(v: jax.Array) -> jax.Array:
    return v[:, None, None, None]


def _apply_brightness(x: jax.Array, u: jax.Array, ratio: float) -> jax.Array:
    return x + _per_image((u - 0.5) * ratio).astype(x.dtype)


def _apply_saturation(x: jax.Array, u: jax.Array, ratio: float) -> jax.Array:
    mean = jnp.mean(x, axis=3, keepdims=True)
    return (x - mean) * _per_image(u * ratio).astype(x.dtype) + mean


def _apply_contrast(x: jax.Array, u: jax.Array, ratio: float) -> jax.Array:
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * _per_image(u + ratio).astype(x.dtype) + mean


@functools.partial(jax.jit, static_argnames=("p",))
def _apply_color(x: jax.Array, u_b: jax.Array, u_s: jax.Array, u_c: jax.Array,
                 p: DsaParams = DsaParams()) -> jax.Array:
    x = _apply_brightness(x, u_b, p.brightness)
    x = _apply_saturation(x, u_s, p.saturation)
    return _apply_contrast(x, u_c, p.contrast)


@jax.jit
def _apply_crop(x: jax.Array, t_h: jax.Array, t_w: jax.Array) -> jax.Array:
    """``out[n, i, j] = x[n, i + t_h[n], j + t_w[n]]``, 0 outside; via a one-pixel zero border and
    clamped indices, which is the reference's construction (and exact for any translation)."""
    n, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = jnp.clip(jnp.arange(h)[None, :] + t_h[:, None] + 1, 0, h + 1)
    cols = jnp.clip(jnp.arange(w)[None, :] + t_w[:, None] + 1, 0, w + 1)
    return padded[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _cutout_keep(size: int, cut: int, offset: jax.Array) -> jax.Array:
    """(N, size) True where the pixel index lies outside the clamped cut interval (cut >= 1)."""
    lo = jnp.clip(offset - cut // 2, 0, size - 1)[:, None]
    hi = jnp.clip(offset - cut // 2 + cut - 1, 0, size - 1)[:, None]
    idx = jnp.arange(size)[None, :]
    return (idx < lo) | (idx > hi)


@functools.partial(jax.jit, static_argnames=("c_h", "c_w"))
def _apply_cutout(x: jax.Array, o_h: jax.Array, o_w: jax.Array, c_h: int, c_w: int) -> jax.Array:
    if c_h <= 0 or c_w <= 0:  # the reference's index grid is empty: nothing is cut
        return x
    keep_rows = _cutout_keep(x.shape[1], c_h, o_h)
    keep_cols = _cutout_keep(x.shape[2], c_w, o_w)
    keep = keep_rows[:, :, None] | keep_cols[:, None, :]
    return x * keep[..., None].astype(x.dtype)


def _apply_flip(x: jax.Array, flip: jax.Array) -> jax.Array:
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def _base_coords(size: int, align_corners: bool, dtype) -> jax.Array:
    """PyTorch ``affine_grid``'s normalised coordinates of the output pixel centres."""
    if size <= 1:
        return jnp.zeros((size,), dtype)
    lin = jnp.linspace(-1.0, 1.0, size, dtype=dtype)
    return lin if align_corners else lin * ((size - 1) / size)


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """PyTorch ``grid_sample``'s normalised → pixel-index coordinate."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


@functools.partial(jax.jit, static_argnames=("align_corners",))
def _affine_resample(x: jax.Array, theta: jax.Array, align_corners: bool) -> jax.Array:
    """``grid_sample(x, affine_grid(theta, x.shape))``: bilinear, zeros padding, NHWC.

    ``theta`` is (N, 2, 3) and maps the output's normalised ``(x_w, y_h, 1)`` to the input's."""
    n, h, w, _ = x.shape
    theta = jax.lax.stop_gradient(theta).astype(x.dtype)
    xs = _base_coords(w, align_corners, x.dtype)[None, None, :]
    ys = _base_coords(h, align_corners, x.dtype)[None, :, None]
    t = theta[:, :, :, None, None]
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    ix = _unnormalize(gx, w, align_corners)
    iy = _unnormalize(gy, h, align_corners)
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    fx = ix - x0
    fy = iy - y0
    batch = jnp.arange(n)[:, None, None]
    out = jnp.zeros_like(x)
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            valid = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
            xi = jnp.clip(xx, 0, w - 1).astype(jnp.int32)
            yi = jnp.clip(yy, 0, h - 1).astype(jnp.int32)
            weight = jnp.where(valid, wx * wy, 0).astype(x.dtype)
            out = out + x[batch, yi, xi] * weight[..., None]
    return out


def _scale_theta(sx: jax.Array, sy: jax.Array) -> jax.Array:
    zero = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], 1)


def _rotate_theta(angle: jax.Array) -> jax.Array:
    c, s, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
    return jnp.stack([jnp.stack([c, -s, zero], -1), jnp.stack([s, c, zero], -1)], 1)


def _apply_scale(x: jax.Array, sx: jax.Array, sy: jax.Array,
                 align_corners: bool = True) -> jax.Array:
    return _affine_resample(x, _scale_theta(sx, sy), align_corners)


def _apply_rotate(x: jax.Array, angle: jax.Array, align_corners: bool = True) -> jax.Array:
    """``angle`` in radians (the reference's θ after its degree → radian conversion)."""
    return _affine_resample(x, _rotate_theta(angle), align_corners)


def _apply_group(group: str, x: jax.Array, op: dict[str, jax.Array], p: DsaParams) -> jax.Array:
    if group == "color":
        return _apply_color(x, op["brightness"], op["saturation"], op["contrast"], p)
    if group == "crop":
        return _apply_crop(x, op["t_h"], op["t_w"])
    if group == "cutout":
        h, w = x.shape[1], x.shape[2]
        return _apply_cutout(x, op["o_h"], op["o_w"], cutout_size(h, p.ratio_cutout),
                             cutout_size(w, p.ratio_cutout))
    if group == "flip":
        return _apply_flip(x, op["flip"])
    if group == "scale":
        return _apply_scale(x, op["sx"], op["sy"], p.align_corners)
    if group == "rotate":
        return _apply_rotate(x, op["angle"], p.align_corners)
    raise AssertionError(group)


def apply_dsa(images: jax.Array, draw: DsaDraw, params: DsaParams = DsaParams(),
              strategy: str = DSA_STRATEGY) -> jax.Array:
    """Apply sampled parameters (from ``sample_dsa`` with the same shape, params and strategy).

    ``strategy`` is a ``_``-joined list of groups (``"none"``/``"None"``/``""``: identity):

    * ``color``  brightness ``x + (u_b − ½)·brightness``; then saturation
      ``(x − m_C)·(u_s·saturation) + m_C`` with ``m_C`` the mean over channels at each pixel; then
      contrast ``(x − m)·(u_c + contrast) + m`` with ``m`` the mean over (H, W, C) of each image;
    * ``crop``   integer translation ``(t_h, t_w)`` with ``t_h ∈ [−s_h, s_h]``,
      ``s_h = int(H·ratio_crop_pad + 0.5)`` (same for W): ``out[i, j] = x[i + t_h, j + t_w]`` when
      that pixel exists, else 0 (what the reference's pad-by-one, clamp-and-gather produces);
    * ``cutout`` a zeroed ``c_h × c_w`` rectangle, ``c_h = int(H·ratio_cutout + 0.5)``, centre
      offset ``o_h ∈ [0, H − (c_h mod 2)]`` (inclusive); rows ``o_h − c_h//2 … o_h − c_h//2 + c_h − 1``
      clamped into ``[0, H − 1]`` (the reference clamps indices, so the rectangle is cut at the
      border, never wrapped or shifted); same for columns; applied as ``x · mask``;
    * ``flip``   horizontal (W axis) flip of the images with ``u_f < prob_flip``;
    * ``scale``  ``sx, sy = u·(r − 1/r) + 1/r`` with ``r = ratio_scale`` and affine matrix
      ``[[sx, 0, 0], [0, sy, 0]]``;
    * ``rotate`` angle ``φ = (u − ½)·2·ratio_rotate·π/180`` and matrix
      ``[[cos φ, −sin φ, 0], [sin φ, cos φ, 0]]``.

    ``scale`` and ``rotate`` resample as PyTorch's ``F.affine_grid`` + ``F.grid_sample`` (bilinear,
    zero padding) with ``align_corners=DsaParams.align_corners``: the matrix maps each output pixel's
    normalised coordinate ``(x_w, y_h, 1)`` to the normalised input coordinate that is sampled.
    MTT passes ``align_corners=True`` (the default here); the DC/DSA/DM ``utils.py`` passes nothing,
    i.e. PyTorch's default ``False``.

    Mode ``'S'`` (the reference default) draws one position of the strategy uniformly per call and
    applies that group to the whole batch (each image with its own parameters); mode ``'M'`` applies
    every group in strategy order. Mode 'S' is a ``lax.switch`` on the drawn position, so one call
    runs one group; under ``vmap`` over keys the switch turns into a select and every group is
    computed (derive per-step keys with ``fold_in`` and call per batch instead).
    """
    _check_params(params)
    groups = parse_strategy(strategy)
    if not groups:
        return images
    if images.ndim != 4:
        raise DdjaxError(f"DSA expects NHWC images, got shape {tuple(images.shape)}")
    x = images.astype(jnp.promote_types(images.dtype, jnp.float32))
    if params.aug_mode == "M":
        for g, op in zip(groups, draw.ops):
            x = _apply_group(g, x, op, params)
    elif len(groups) == 1:
        x = _apply_group(groups[0], x, draw.ops[0], params)
    else:
        branches = [
            (lambda xx, g=g, op=op: _apply_group(g, xx, op, params))
            for g, op in zip(groups, draw.ops)
        ]
        x = jax.lax.switch(draw.choice, branches, x)
    return x.astype(images.dtype)


def dsa_augment(key: jax.Array, images: jax.Array, params: DsaParams = DsaParams(),
                strategy: str = DSA_STRATEGY) -> jax.Array:
    """DSA-augment a batch of NHWC images (semantics on ``apply_dsa``, keys on ``sample_dsa``)."""
    if not parse_strategy(strategy):
        return images
    dtype = jnp.promote_types(images.dtype, jnp.float32)
    draw = sample_dsa(key, images.shape, params, strategy, dtype)
    return apply_dsa(images, draw, params, strategy)


__all__ = [
    "AUG_MODES", "DSA_STRATEGY", "GROUP_IDS", "DsaDraw", "DsaParams", "apply_dsa", "crop_shift",
    "cutout_size", "dsa_augment", "dsa_choice", "parse_strategy", "sample_dsa",
]
