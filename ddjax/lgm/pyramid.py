"""LGM's synthetic-set parameterisations: a multi-scale pyramid of latent images, or plain pixels.

A set is a list of levels ``[N, r, r, 3]``, coarse to fine (1, 2, 4, ... up to ``syn_res``),
decoded as ``sigmoid(2 * M(sum of the levels upsampled to syn_res))``. Every level is allocated
from the start; a level is activated every ``extent`` steps (``extension_due``) and inactive ones
stay zero because their gradients are masked (``active_mask``), so one compiled step serves the
whole run. Upsampling is a pair of fixed interpolation matrices per level (PyTorch's
align_corners=False rule). The decoding, the initialisations and the extension rule are in
docs/lgm.md#synthetic-images.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.errors import DdjaxError

# The ImageNet colour-correlation square root of the reference (the Lucid values).
COLOR_CORRELATION_SQRT = ((0.26, 0.09, 0.02),
                          (0.27, 0.00, -0.05),
                          (0.27, -0.09, 0.03))
DISTILL_MODES = ("pyramid", "pixels")
INIT_MODES = ("noise", "zero")


def color_matrix(dtype=np.float32) -> np.ndarray:
    """The colour matrix divided by its largest column norm (0.461952), as the reference does,
    computed in ``dtype`` (the images'), so float64 images get a float64 matrix."""
    matrix = np.array(COLOR_CORRELATION_SQRT, dtype)
    return matrix / np.linalg.norm(matrix, axis=0).max()


def level_resolutions(syn_res: int, start_res: int = 1) -> tuple[int, ...]:
    """Resolutions of a full pyramid, coarse to fine: start, 2*start, ... capped at ``syn_res``."""
    if syn_res < 1 or not 1 <= start_res <= syn_res:
        raise DdjaxError(f"pyramid needs 1 <= start_res ({start_res}) <= syn_res ({syn_res})")
    sizes = [start_res]
    while sizes[-1] < syn_res:
        sizes.append(min(2 * sizes[-1], syn_res))
    return tuple(sizes)


@functools.lru_cache(maxsize=64)
def upsample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` float64 weights of 1-D bilinear resizing with align_corners=False
    (PyTorch's rule: source = (i + 0.5) * in / out - 0.5, clamped below at 0; the upper neighbour
    is clamped to the last pixel); ``upsample`` casts them to the images' dtype."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    lo = np.minimum(lo, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), hi), frac)
    weights.flags.writeable = False  # cached and shared
    return weights


def upsample(x_NHWC: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of square images to ``size`` x ``size`` (identity when already that size)."""
    if x_NHWC.shape[1] == size and x_NHWC.shape[2] == size:
        return x_NHWC
    rows = jnp.asarray(upsample_matrix(x_NHWC.shape[1], size), x_NHWC.dtype)
    cols = jnp.asarray(upsample_matrix(x_NHWC.shape[2], size), x_NHWC.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x_NHWC, cols)


def decode_latent(levels, syn_res: int, decorrelate: bool = True) -> jax.Array:
    """The pre-sigmoid image: summed upsampled levels, colour-mixed when ``decorrelate``."""
    pre = sum(upsample(level, syn_res) for level in levels)
    if decorrelate:
        pre = pre @ jnp.asarray(color_matrix(pre.dtype)).T
    return pre


def decode(levels, syn_res: int, decorrelate: bool = True) -> jax.Array:
    """Images ``[N, syn_res, syn_res, 3]`` in (0, 1) from the levels (pure, differentiable)."""
    return jax.nn.sigmoid(2.0 * decode_latent(levels, syn_res, decorrelate))


# Jitted once per (level shapes, syn_res, decorrelate), for decoding outside a compiled step.
decode_jit = jax.jit(decode, static_argnums=(1, 2))


def init_levels(key: jax.Array, num_images: int, *, mode: str, syn_res: int, start_res: int = 1,
                init: str = "noise") -> list[jax.Array]:
    """All levels of a run, allocated once: for "pyramid" one per resolution of
    ``level_resolutions``, the first N(0, 1) ("noise") or zero ("zero") and the others zero until
    ``extend_levels`` activates them; for "pixels" a single ``syn_res`` level."""
    if mode not in DISTILL_MODES:
        raise DdjaxError(f"unknown distill mode {mode!r}; use one of {', '.join(DISTILL_MODES)}")
    if init not in INIT_MODES:
        raise DdjaxError(f"unknown init mode {init!r}; use one of {', '.join(INIT_MODES)}")
    sizes = level_resolutions(syn_res, start_res) if mode == "pyramid" else (syn_res,)
    levels = [jnp.zeros((num_images, r, r, 3), jnp.float32) for r in sizes]
    if init == "noise":
        levels[0] = jax.random.normal(key, levels[0].shape, jnp.float32)
    return levels


def extension_due(step: int, extent: int) -> bool:
    """Whether the reference adds a level at the start of ``step``: steps 1 + k*extent, k >= 1."""
    return step > 1 and (step - 1) % extent == 0


def extend_levels(levels, active: int, key: jax.Array,
                  init: str = "noise") -> tuple[list[jax.Array], int]:
    """Activate level ``active`` (the next finer one; see the module docstring): returns the new
    levels and active count, unchanged when every level is already active."""
    if active >= len(levels):
        return list(levels), active
    old, new = active, active + 1
    scaled = [level * (old / new) for level in levels[:old]]
    res = levels[old].shape[1]
    if init == "noise":
        fresh = jax.random.normal(key, levels[old].shape, jnp.float32) / new
    else:
        fresh = sum(upsample(level, res) for level in scaled) / old
    return scaled + [fresh] + list(levels[new:]), new


def active_mask(active: int, total: int) -> np.ndarray:
    """[total] 1.0 for the active levels, 0.0 for the rest (multiplies their gradients)."""
    return (np.arange(total) < active).astype(np.float32)

