"""LGM's differentiable augmentations, on NHWC images in [0, 1].

Modes: "standard" (distillation: flip, the reference's unclamped random resized crop, then
N(0.5, 0.2^2) noise on a random half of the images), "basic" (probe training: flip and crop) and
"none" (the whole image resampled). The crop is an axis-aligned bilinear resample with zero
padding, computed separably with (out, in) tent-weight matrices. Parameters are drawn once per
batch and sliced per row (``take_rows``), so chunked and unchunked computations see the same
augmentation. See docs/lgm.md#augmentation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ddjax.errors import DdjaxError

LGM_AUG_MODES = ("standard", "basic", "none")
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
NOISE_MEAN, NOISE_STD = 0.5, 0.2


class AugParams(NamedTuple):
    """Per-row augmentation draws: flip [N] bool, box [N, 4] (w, h, x1, y1) as fractions of the
    input side, noise_on [N] bool, noise_keys [N] keys."""

    flip: jax.Array
    box: jax.Array
    noise_on: jax.Array
    noise_keys: jax.Array


def check_mode(mode: str) -> str:
    if mode not in LGM_AUG_MODES:
        raise DdjaxError(f"unknown augmentation mode {mode!r}; use one of "
                         f"{', '.join(LGM_AUG_MODES)}")
    return mode


def _boxes_from_uniforms(u: jax.Array) -> jax.Array:
    """[n, 4] (w, h, x1, y1) from [n, 4] U(0, 1) draws (scale, log-ratio, x, y)."""
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    ratio = jnp.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w, h = jnp.sqrt(scale * ratio), jnp.sqrt(scale / ratio)
    return jnp.stack([w, h, u[:, 2] * (1.0 - w), u[:, 3] * (1.0 - h)], axis=1)


def sample_crop_boxes(key: jax.Array, n: int) -> jax.Array:
    """[n, 4] (w, h, x1, y1) of the reference's unclamped random resized crop."""
    return _boxes_from_uniforms(jax.random.uniform(key, (n, 4)))


def sample_aug(key: jax.Array, n: int, mode: str) -> AugParams:
    """Draw the augmentation of ``n`` rows for ``mode``: every per-row decision comes from one
    [n, 6] uniform draw (a Bernoulli(0.5) is u < 0.5), which keeps the compiled program small."""
    check_mode(mode)
    k_draws, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_draws, (n, 6))
    if mode == "none":
        flip = jnp.zeros((n,), bool)
        box = jnp.tile(jnp.asarray([[1.0, 1.0, 0.0, 0.0]], jnp.float32), (n, 1))
    else:
        flip = u[:, 0] < 0.5
        box = _boxes_from_uniforms(u[:, 1:5])
    noise_on = u[:, 5] < 0.5 if mode == "standard" else jnp.zeros((n,), bool)
    return AugParams(flip, box, noise_on, jax.random.split(k_noise, n))


def take_rows(params: AugParams, rows: jax.Array) -> AugParams:
    """The parameters of the given rows (for chunking)."""
    return jax.tree.map(lambda a: a[rows], params)


def hflip(x_NHWC: jax.Array, flip: jax.Array) -> jax.Array:
    """Mirror the images whose ``flip`` is set."""
    return jnp.where(flip[:, None, None, None], x_NHWC[:, :, ::-1, :], x_NHWC)


def crop_matrix(size_frac: jax.Array, start_frac: jax.Array, in_size: int,
                out_size: int) -> jax.Array:
    """[N, out, in] bilinear weights of the crop [start, start + size) (fractions of the side) along
    one axis, sampled at ``out_size`` pixel centres; pixels outside the image weigh nothing."""
    out_norm = (2.0 * jnp.arange(out_size) + 1.0) / out_size - 1.0             # [out] in (-1, 1)
    centre = 2.0 * start_frac + size_frac - 1.0                                 # [N]
    src_norm = size_frac[:, None] * out_norm[None, :] + centre[:, None]         # [N, out]
    src = ((src_norm + 1.0) * in_size - 1.0) / 2.0                              # pixel coordinates
    return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, :, None] - jnp.arange(in_size)[None, None, :]))


def resized_crop(x_NHWC: jax.Array, box: jax.Array, out_size: int) -> jax.Array:
    """Resample each image's box ``(w, h, x1, y1)`` to ``out_size`` x ``out_size``, zeros
    outside the image."""
    rows = crop_matrix(box[:, 1], box[:, 3], x_NHWC.shape[1], out_size)
    cols = crop_matrix(box[:, 0], box[:, 2], x_NHWC.shape[2], out_size)
    return jnp.einsum("noh,nhwc,npw->nopc", rows, x_NHWC, cols)


def add_noise(x_NHWC: jax.Array, noise_on: jax.Array, noise_keys: jax.Array) -> jax.Array:
    """Add N(0.5, 0.2^2) noise to the images whose ``noise_on`` is set, each from its own key."""
    noise = jax.vmap(lambda k: jax.random.normal(k, x_NHWC.shape[1:], x_NHWC.dtype))(noise_keys)
    return x_NHWC + jnp.where(noise_on[:, None, None, None], NOISE_MEAN + NOISE_STD * noise, 0.0)


def augment(x_NHWC: jax.Array, params: AugParams, out_size: int, noise: bool = True) -> jax.Array:
    """Flip, crop to ``out_size``, noise (each a no-op where its draw says so; ``noise=False``
    leaves the noise out of the program, for modes that never add it)."""
    x = hflip(x_NHWC, params.flip)
    x = resized_crop(x, params.box, out_size)
    return add_noise(x, params.noise_on, params.noise_keys) if noise else x


def center_view(x_NHWC: jax.Array, out_size: int) -> jax.Array:
    """The evaluation view: a central ``out_size`` crop (torchvision CenterCrop offsets) when the
    images are at least that large, else a bilinear resize up to it."""
    height, width = x_NHWC.shape[1:3]
    if height >= out_size and width >= out_size:
        top, left = int(round((height - out_size) / 2.0)), int(round((width - out_size) / 2.0))
        return x_NHWC[:, top:top + out_size, left:left + out_size, :]
    shape = (x_NHWC.shape[0], out_size, out_size, x_NHWC.shape[3])
    return jax.image.resize(x_NHWC, shape, "bilinear")
