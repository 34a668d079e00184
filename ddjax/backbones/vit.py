"""One configurable Vision Transformer (Flax linen) for the frozen backbones LGM probes.

DINO, DINOv2, MoCo-v3, OpenAI CLIP and EVA-02 are one pre-norm transformer with a few switches,
all fields of :class:`ViTConfig` (tokens, position tables or RoPE, layer scale, MLP kind, extra
LayerNorms, pooling, projection). The module returns the feature ``[N, D]`` (float32) of
normalised NHWC images. Blocks are one ``nn.scan`` (compile time flat in depth), optionally
``jax.checkpoint``-ed for LGM's backward pass, and can compute in bfloat16. See docs/lgm.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddjax.errors import DdjaxError


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    heads: int
    patch: int
    mlp_hidden: int
    pos_grid: int  # side of the patch grid the position table (and RoPE) were trained at
    class_token: bool = True
    registers: int = 0
    # "learned" (the table has a row for the class token) | "sincos" (MoCo-v3, computed)
    pos_embed: str = "learned"
    # Resizing the table: > 0 is DINO's rule, scale factor (g + offset) / G; 0 resizes to g.
    interp_offset: float = 0.0
    interp_antialias: bool = True
    patch_bias: bool = True
    pre_norm: bool = False
    norm_eps: float = 1e-6
    layer_scale: bool = False
    act: str = "gelu"  # "gelu" (erf) | "quick_gelu" | "swiglu"
    attn_norm: bool = False  # LayerNorm on the attention output before its projection
    mlp_norm: bool = False  # LayerNorm on the MLP hidden layer before fc2
    rope: bool = False
    rope_temperature: float = 10000.0
    final_norm: bool = True
    pool: str = "cls"  # "cls" | "avg" (mean of the patch tokens)
    fc_norm: bool = False
    proj_dim: int = 0

    def __post_init__(self):
        if self.width % self.heads:
            raise DdjaxError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.act not in ("gelu", "quick_gelu", "swiglu"):
            raise DdjaxError(f"unknown activation {self.act!r}; use gelu, quick_gelu or swiglu")
        if self.pos_embed not in ("learned", "sincos"):
            raise DdjaxError(f"unknown pos_embed {self.pos_embed!r}; use learned or sincos")
        if self.pool not in ("cls", "avg") or (self.pool == "cls" and not self.class_token):
            raise DdjaxError(
                f"pool {self.pool!r} needs "
                f"{'a class token' if self.pool == 'cls' else 'to be cls or avg'}"
            )
        if self.registers and not self.class_token:
            raise DdjaxError(
                "register tokens follow the class token; a config without one has none"
            )
        if self.pos_embed == "sincos" and self.width % 4:
            raise DdjaxError("the 2-D sin-cos position embedding needs a width divisible by 4")
        if self.rope and (self.width // self.heads) % 4:
            raise DdjaxError("2-D RoPE needs a head dimension divisible by 4")

    @property
    def feature_dim(self) -> int:
        return self.proj_dim or self.width

    @property
    def num_prefix(self) -> int:
        return int(self.class_token) + self.registers


# ---------------------------------------------------------------------------------------------
# Fixed tables (numpy, built at trace time for the static input grid).


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(
    n_in: int, n_out: int, scale: float | None = None, antialias: bool = False
) -> np.ndarray:
    """``[n_out, n_in]`` weights of PyTorch's ``F.interpolate(mode="bicubic", align_corners=False)``
    along one axis. ``scale`` is the scale factor the caller passed (PyTorch maps output pixels with
    it rather than with ``n_out / n_in``); None means a size-based resize.

    Without antialiasing: cubic kernel a = -0.75, four taps, edge indices clamped. With
    antialiasing (PIL's filter, a = -0.5): when shrinking the kernel is widened by the shrink
    factor and the taps inside the image are renormalised.
    """
    step = 1.0 / scale if scale else n_in / n_out  # input pixels per output pixel
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        if not antialias:
            src = step * (i + 0.5) - 0.5
            base = math.floor(src)
            t = src - base
            for offset, w in zip((-1, 0, 1, 2), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
                weights[i, min(max(base + offset, 0), n_in - 1)] += w
        else:
            support = 2.0 * step if step >= 1.0 else 2.0
            inv = 1.0 / step if step >= 1.0 else 1.0
            center = step * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
            weights[i, lo:hi] = taps / taps.sum()
    return weights.astype(np.float32)


def resize_pos_table(table_GGD: jax.Array, grid: tuple[int, int], cfg: ViTConfig) -> jax.Array:
    """The ``[G*G, D]`` patch position table resized to ``grid`` (rows, cols), per family."""
    side = cfg.pos_grid
    if grid == (side, side):
        return table_GGD
    mats = []
    for g in grid:
        scale = (g + cfg.interp_offset) / side if cfg.interp_offset else None
        mats.append(jnp.asarray(bicubic_matrix(side, g, scale, cfg.interp_antialias)))
    table = table_GGD.reshape(side, side, -1).astype(jnp.float32)
    out = jnp.einsum("ai,bj,ijd->abd", mats[0], mats[1], table, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(grid[0] * grid[1], -1).astype(table_GGD.dtype)


@functools.lru_cache(maxsize=16)
def sincos_table(grid: tuple[int, int], width: int, temperature: float = 10000.0) -> np.ndarray:
    """MoCo-v3's fixed ``[rows*cols, width]`` table, per patch [sin rw, cos rw, sin cw, cos cw]
    with w_k = temperature^(-k / (width/4)), r the row and c the column (for the square grids MoCo
    uses this is exactly its table; its class-token row is zero)."""
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    r = rows.reshape(-1, 1) * omega
    c = cols.reshape(-1, 1) * omega
    return np.concatenate([np.sin(r), np.cos(r), np.sin(c), np.cos(c)], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def rope_tables(
    grid: tuple[int, int], ref_grid: int, head_dim: int, temperature: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """EVA-02's axial RoPE as ``(sin, cos)``, each ``[rows*cols, head_dim]``: head_dim/4 frequencies
    f_k = temperature^(-k / (head_dim/4)) applied to the row then the column coordinate, each angle
    repeated for an interleaved (even, odd) pair. Coordinates are rescaled to the pre-training grid
    (``ref_grid``), so a larger input spans the same angle range."""
    bands = head_dim // 4
    freqs = 1.0 / temperature ** (np.arange(bands, dtype=np.float64) / bands)
    rows = np.arange(grid[0], dtype=np.float64) * ref_grid / grid[0]
    cols = np.arange(grid[1], dtype=np.float64) * ref_grid / grid[1]
    r, c = np.meshgrid(rows, cols, indexing="ij")
    angles = np.concatenate([r.reshape(-1, 1) * freqs, c.reshape(-1, 1) * freqs], axis=1)
    angles = np.repeat(angles, 2, axis=1)
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def _rotate_pairs(x: jax.Array) -> jax.Array:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Layers.

_dense_init = nn.initializers.truncated_normal(0.02)


def _norm(cfg: ViTConfig, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=dtype, name=name)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches times a ``(p, p, C, D)`` (HWIO) kernel: the strided conv of the
    PyTorch models, written as a reshape and one matmul."""

    cfg: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        n, h, w, c = x_NHWC.shape
        p = self.cfg.patch
        if h % p or w % p:
            raise DdjaxError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        kernel = self.param("kernel", _dense_init, (p, p, c, self.cfg.width))
        patches = x_NHWC.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, (h // p) * (w // p), p * p * c)
        y = patches @ kernel.reshape(p * p * c, -1).astype(self.dtype)
        if self.cfg.patch_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.cfg.width,)).astype(self.dtype)
        return y


class Attention(nn.Module):
    cfg: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope) -> jax.Array:
        cfg = self.cfg
        n, t, d = x.shape
        qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(n, t, 3, cfg.heads, d // cfg.heads), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [N, T, heads, head_dim]
        if rope is not None:
            sin, cos = (jnp.asarray(a, self.dtype)[None, :, None, :] for a in rope)
            npre = cfg.num_prefix

            def rotate(z):
                body = z[:, npre:]
                return jnp.concatenate(
                    [z[:, :npre], body * cos + _rotate_pairs(body) * sin], axis=1
                )

            q, k = rotate(q), rotate(k)
        out = jax.nn.dot_product_attention(q, k, v).reshape(n, t, d)
        if cfg.attn_norm:
            out = _norm(cfg, self.dtype, "norm")(out)
        return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out)


class Mlp(nn.Module):
    cfg: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        swiglu = cfg.act == "swiglu"  # then fc1 holds [gate | value]
        fc1 = nn.Dense((2 if swiglu else 1) * cfg.mlp_hidden, dtype=self.dtype,
                       kernel_init=_dense_init, name="fc1")
        if swiglu:
            gate, value = jnp.split(fc1(x), 2, axis=-1)
            h = nn.silu(gate) * value
        elif cfg.act == "quick_gelu":
            h = fc1(x)
            h = h * nn.sigmoid(1.702 * h)
        else:
            h = nn.gelu(fc1(x), approximate=False)
        if cfg.mlp_norm:
            h = _norm(cfg, self.dtype, "norm")(h)
        return nn.Dense(cfg.width, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)


class Block(nn.Module):
    cfg: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope):
        cfg = self.cfg
        h = Attention(cfg, self.dtype, name="attn")(_norm(cfg, self.dtype, "norm1")(x), rope)
        if cfg.layer_scale:
            h = h * self.param("ls1", nn.initializers.ones, (cfg.width,)).astype(self.dtype)
        x = x + h
        h = Mlp(cfg, self.dtype, name="mlp")(_norm(cfg, self.dtype, "norm2")(x))
        if cfg.layer_scale:
            h = h * self.param("ls2", nn.initializers.ones, (cfg.width,)).astype(self.dtype)
        return x + h, None


class ViT(nn.Module):
    """Images ``[N, H, W, 3]`` (already normalised) -> features ``[N, cfg.feature_dim]`` (float32).

    ``dtype`` is the computation dtype (parameters stay float32); ``remat`` wraps each block in
    ``jax.checkpoint`` (free for a forward pass; for a backward pass activations are recomputed
    block by block instead of stored).
    """

    cfg: ViTConfig
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg = self.cfg
        n, h, w, _ = x_NHWC.shape
        grid = (h // cfg.patch, w // cfg.patch)
        x = PatchEmbed(cfg, self.dtype, name="patch_embed")(x_NHWC.astype(self.dtype))

        if cfg.pos_embed == "learned":
            rows = int(cfg.class_token) + cfg.pos_grid ** 2
            table = self.param("pos_embed", nn.initializers.normal(0.02), (1, rows, cfg.width))[0]
            patch_pos = resize_pos_table(table[int(cfg.class_token):], grid, cfg)
            cls_pos = table[:1] if cfg.class_token else None
        else:
            patch_pos = jnp.asarray(sincos_table(grid, cfg.width))
            cls_pos = jnp.zeros((1, cfg.width), jnp.float32) if cfg.class_token else None
        x = x + patch_pos.astype(self.dtype)
        if cfg.class_token:
            cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, cfg.width))
            cls = jnp.broadcast_to((cls[0] + cls_pos).astype(self.dtype), (n, 1, cfg.width))
            parts = [cls]
            if cfg.registers:
                regs = self.param(
                    "reg_tokens", nn.initializers.normal(1e-6), (1, cfg.registers, cfg.width)
                )
                parts.append(
                    jnp.broadcast_to(regs.astype(self.dtype), (n, cfg.registers, cfg.width))
                )
            x = jnp.concatenate(parts + [x], axis=1)
        if cfg.pre_norm:
            x = _norm(cfg, self.dtype, "norm_pre")(x)

        rope = None
        if cfg.rope:
            rope = rope_tables(grid, cfg.pos_grid, cfg.width // cfg.heads, cfg.rope_temperature)
        block = nn.remat(Block, prevent_cse=False) if self.remat else Block
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=cfg.depth,
        )
        x, _ = blocks(cfg, self.dtype, name="blocks")(x, rope)

        if cfg.pool == "cls":
            pooled = x[:, 0]
            if cfg.final_norm:  # LayerNorm is per token: normalising the pooled token is the same
                pooled = _norm(cfg, self.dtype, "norm")(pooled)
        else:
            if cfg.final_norm:
                x = _norm(cfg, self.dtype, "norm")(x)
            pooled = x[:, cfg.num_prefix:].astype(jnp.float32).mean(axis=1).astype(self.dtype)
        if cfg.fc_norm:
            pooled = _norm(cfg, self.dtype, "fc_norm")(pooled)
        if cfg.proj_dim:
            proj = self.param("proj", _dense_init, (cfg.width, cfg.proj_dim))
            pooled = pooled @ proj.astype(self.dtype)
        return pooled.astype(jnp.float32)


def param_shapes(cfg: ViTConfig) -> dict:
    """The ``params`` tree of ``ViT(cfg)`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    side = cfg.pos_grid * cfg.patch
    x = jnp.zeros((1, side, side, 3), jnp.float32)
    return jax.eval_shape(lambda: ViT(cfg).init(jax.random.key(0), x))["params"]


def param_count(cfg: ViTConfig) -> int:
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes(cfg))))
