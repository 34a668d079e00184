"""Tiny ViTs shared by the backbone tests: timm's reference network and a registered ddjax
variant of the same sizes (each test file picks its own sizes)."""

from __future__ import annotations

from ddjax.backbones.vit import ViTConfig
from ddjax.backbones.vit_configs import ViTVariant
from ddjax.backbones.vit_store import register_vit_variant


def timm_vit(ref, *, size: int, patch: int, width: int, depth: int, heads: int, **kwargs):
    """timm's ``VisionTransformer`` without a head (MLP ratio 4 unless ``kwargs`` say otherwise)."""
    return ref.timm.models.vision_transformer.VisionTransformer(
        img_size=size, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
        num_classes=0, **kwargs)


def register_tiny_variant(name: str, family: str, *, width: int, depth: int, heads: int,
                          patch: int, grid: int, resolution: int | None = None,
                          **overrides) -> ViTVariant:
    """Register (and return) a ddjax ViT variant; the MLP is 4x wide unless ``mlp_hidden`` is
    given, the resolution ``grid * patch`` unless given."""
    overrides.setdefault("mlp_hidden", 4 * width)
    cfg = ViTConfig(width=width, depth=depth, heads=heads, patch=patch, pos_grid=grid, **overrides)
    variant = ViTVariant(name, family, cfg, resolution=resolution or grid * patch)
    register_vit_variant(variant)
    return variant
