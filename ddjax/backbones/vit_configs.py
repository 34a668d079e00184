"""The named ViT backbones: architecture, weight layout family, resolution, normalisation, feature.

Every variant runs at 224 x 224 with the ImageNet mean/std, as in LGM, whatever its native
preprocessing (recorded in ``native_mean``/``native_std``). ``FEATURES`` says which feature each
family gives (the one LGM probes) and ``SOURCES`` which official files and layouts import; LGM's
own keys (``dinov2_vitb``, ``clip_vitb``, ...) are aliases. See docs/lgm.md.
"""

from __future__ import annotations

import dataclasses

from ddjax.backbones.vit import ViTConfig
from ddjax.errors import DdjaxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FEATURES = {
    "dinov2": "class token after the final LayerNorm (x_norm_clstoken)",
    "dino": "class token after the final LayerNorm",
    "mocov3": "class token after the final LayerNorm",
    "clip": "ln_post(class token) @ proj: the projected image embedding, not L2-normalised",
    "eva02": "mean of the patch tokens (class token excluded), then fc_norm",
}

# Where the official weights come from, and the layout `ddjax backbone import` expects.
SOURCES = {
    "dinov2": "torch hub facebookresearch/dinov2 <name>_pretrain.pth (keys cls_token, pos_embed, "
    "[register_tokens,] mask_token, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,"
    "ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*, norm.*)",
    "dino": "torch hub facebookresearch/dino dino_<arch>_pretrain.pth (timm ViT keys), or a full "
    "checkpoint's 'teacher' (prefix backbone.)",
    "mocov3": "MoCo v3 vit-*-300ep.pth.tar ('state_dict', prefix module.base_encoder.), its "
    "convert_to_deit.py output ('model'), or a timm-layout state dict (.safetensors)",
    "clip": "OpenAI CLIP <arch>.pt (TorchScript archive or state dict; keys visual.conv1.weight, "
    "visual.class_embedding, visual.transformer.resblocks.N.*, visual.ln_post.*, visual.proj) "
    "or open_clip's open_clip_pytorch_model.bin of the OpenAI weights",
    "eva02": "timm eva02_<size>_patch14_224.mim_in22k model.safetensors / pytorch_model.bin "
    "(timm Eva keys: blocks.N.attn.{qkv,q_bias,v_bias | q_proj,k_proj,v_proj}, "
    "blocks.N.mlp.{fc1 | fc1_g,fc1_x,norm},fc2, fc_norm.*), or EVA-02's own pre-training "
    "checkpoint (mlp.w1/w2/w3, mlp.ffn_ln, a final norm read as fc_norm, as timm does)",
}


@dataclasses.dataclass(frozen=True)
class ViTVariant:
    name: str
    family: str  # weight layout and feature rule: dinov2 | dino | mocov3 | clip | eva02
    config: ViTConfig
    resolution: int = 224
    native_mean: tuple[float, float, float] = IMAGENET_MEAN
    native_std: tuple[float, float, float] = IMAGENET_STD
    native_resolution: int = 224

    @property
    def feature(self) -> str:
        return FEATURES[self.family]

    @property
    def source(self) -> str:
        return SOURCES[self.family]


def _dinov2(name, width, depth, heads, registers=0):
    cfg = ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        patch=14,
        mlp_hidden=4 * width,
        pos_grid=37,
        registers=registers,
        layer_scale=True,
        interp_offset=0.0 if registers else 0.1,
        interp_antialias=bool(registers),
    )
    return ViTVariant(name, "dinov2", cfg, native_resolution=518)


def _dino(name, width, heads, patch):
    cfg = ViTConfig(
        width=width,
        depth=12,
        heads=heads,
        patch=patch,
        mlp_hidden=4 * width,
        pos_grid=224 // patch,
        interp_offset=0.1,
        interp_antialias=False,
    )
    return ViTVariant(name, "dino", cfg)


def _mocov3(name, width, depth, heads):
    cfg = ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        patch=16,
        mlp_hidden=4 * width,
        pos_grid=14,
        pos_embed="sincos",
    )
    return ViTVariant(name, "mocov3", cfg)


def _clip(name, width, depth, heads, patch, proj_dim):
    cfg = ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        patch=patch,
        mlp_hidden=4 * width,
        pos_grid=224 // patch,
        patch_bias=False,
        pre_norm=True,
        norm_eps=1e-5,
        act="quick_gelu",
        proj_dim=proj_dim,
    )
    return ViTVariant(name, "clip", cfg, native_mean=CLIP_MEAN, native_std=CLIP_STD)


def _eva02(name, width, depth, heads, sub_ln):
    cfg = ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        patch=14,
        mlp_hidden=int(width * 4 * 2 / 3),
        pos_grid=16,
        act="swiglu",
        mlp_norm=sub_ln,
        rope=True,
        final_norm=False,
        pool="avg",
        fc_norm=True,
    )
    return ViTVariant(name, "eva02", cfg, native_mean=CLIP_MEAN, native_std=CLIP_STD)


_VARIANTS = [
    _dinov2("dinov2_vits14", 384, 12, 6),
    _dinov2("dinov2_vitb14", 768, 12, 12),
    _dinov2("dinov2_vitl14", 1024, 24, 16),
    _dinov2("dinov2_vits14_reg", 384, 12, 6, registers=4),
    _dinov2("dinov2_vitb14_reg", 768, 12, 12, registers=4),
    _dinov2("dinov2_vitl14_reg", 1024, 24, 16, registers=4),
    _clip("clip_vitb32", 768, 12, 12, 32, 512),
    _clip("clip_vitb16", 768, 12, 12, 16, 512),
    _clip("clip_vitl14", 1024, 24, 16, 14, 768),
    _eva02("eva02_vitt14", 192, 12, 3, sub_ln=False),
    _eva02("eva02_vits14", 384, 12, 6, sub_ln=False),
    _eva02("eva02_vitb14", 768, 12, 12, sub_ln=True),
    _eva02("eva02_vitl14", 1024, 24, 16, sub_ln=True),
    _mocov3("mocov3_vits16", 384, 12, 12),  # MoCo v3's ViT-S has 12 heads
    _mocov3("mocov3_vitb16", 768, 12, 12),
    _mocov3("mocov3_vitl16", 1024, 24, 16),
    _dino("dino_vits16", 384, 6, 16),
    _dino("dino_vits8", 384, 6, 8),
    _dino("dino_vitb16", 768, 12, 16),
    _dino("dino_vitb8", 768, 12, 8),
]
VARIANTS: dict[str, ViTVariant] = {v.name: v for v in _VARIANTS}

# LGM's keys (models/__init__.py) for the same networks.
ALIASES = {
    "dinov2_vits": "dinov2_vits14",
    "dinov2_vitb": "dinov2_vitb14",
    "dinov2_vitl": "dinov2_vitl14",
    "clip_vitb": "clip_vitb32",
    "clip_vitl": "clip_vitl14",
    "eva02_vitt": "eva02_vitt14",
    "eva02_vits": "eva02_vits14",
    "eva02_vitb": "eva02_vitb14",
    "eva02_vitl": "eva02_vitl14",
    "mocov3_vitb": "mocov3_vitb16",
    "mocov3_vitl": "mocov3_vitl16",
}


def get_variant(name: str) -> ViTVariant:
    """The variant called ``name`` (or an LGM alias of it); DdjaxError listing the names if none."""
    variant = VARIANTS.get(ALIASES.get(name, name))
    if variant is None:
        raise DdjaxError(
            f"unknown ViT backbone {name!r}; known: {', '.join(VARIANTS)} "
            f"(LGM aliases: {', '.join(ALIASES)})"
        )
    return variant
