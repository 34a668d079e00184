"""The ViT module alone: PyTorch's bicubic resize, bfloat16, rematerialisation, and the full-size
named variants against the reference libraries' own models (every key and shape, param counts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.backbones.vit import ViT, ViTConfig, bicubic_matrix, param_count, param_shapes
from ddjax.backbones.vit_configs import VARIANTS, get_variant
from ddjax.backbones.weights import convert_state_dict


@pytest.mark.parametrize(
    "n_in, n_out, offset, antialias",
    [
        (37, 16, 0.1, False),  # DINOv2 at 224
        (37, 16, 0.0, True),  # DINOv2 with registers at 224
        (14, 28, 0.1, False),
        (6, 9, 0.0, True),
        (16, 23, 0.0, False),
        (9, 4, 0.0, True),
        (5, 5, 0.0, True),
    ],
)
def test_bicubic_matrix_matches_torch_interpolate(ref, n_in, n_out, offset, antialias):
    torch = ref.torch
    x = torch.randn(1, 3, n_in, n_in)
    kwargs = {"scale_factor": (n_out + offset) / n_in} if offset else {"size": (n_out, n_out)}
    want = torch.nn.functional.interpolate(
        x, mode="bicubic", antialias=antialias, **kwargs
    ).numpy()[0]
    mat = bicubic_matrix(n_in, n_out, (n_out + offset) / n_in if offset else None, antialias)
    got = np.einsum("ai,bj,cij->cab", mat, mat, x.numpy()[0])
    assert ref.rel_err(got, want) < 1e-5


TINY = ViTConfig(
    width=64,
    depth=2,
    heads=4,
    patch=4,
    mlp_hidden=128,
    pos_grid=4,
    registers=2,
    layer_scale=True,
    act="swiglu",
    rope=True,
    mlp_norm=True,
    attn_norm=True,
)


@pytest.fixture(scope="module")
def tiny_params():
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), param_shapes(TINY)
    )


def test_bfloat16_forward_is_close_to_float32(tiny_params, images):
    x = images(4, 16)
    full = ViT(TINY).apply({"params": tiny_params}, x)
    half = ViT(TINY, dtype=jnp.bfloat16).apply({"params": tiny_params}, x)
    assert half.dtype == jnp.float32 and half.shape == full.shape == (4, 64)
    err = float(jnp.abs(half - full).max() / jnp.abs(full).max())
    assert 0 < err < 5e-2


def test_remat_gives_the_same_input_gradient(tiny_params, images):
    x = jnp.asarray(images(3, 16))

    def grad(remat):
        model = ViT(TINY, remat=remat)
        return jax.jit(jax.grad(lambda x: jnp.sum(model.apply({"params": tiny_params}, x) ** 2)))(x)

    plain, rematted = grad(False), grad(True)
    assert float(jnp.abs(plain).max()) > 0
    np.testing.assert_allclose(np.asarray(rematted), np.asarray(plain), rtol=1e-5, atol=1e-6)


def _reference_models(ref):
    """name -> (reference model on the meta device, how to write its state dict in the release
    layout, parameters ddjax has beyond the reference's state dict)."""
    timm = ref.timm
    from open_clip import get_model_config
    from open_clip.model import _build_vision_tower

    def timm_model(arch, **kwargs):
        return lambda: timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)

    def dinov2(
        sd, v
    ):  # hub layout: mask_token, and for the register models the class row in pos_embed
        sd = dict(sd, mask_token=np.zeros((1, v.config.width), np.float32))
        if "reg_token" in sd:
            sd["register_tokens"] = sd.pop("reg_token")
            pos = sd["pos_embed"]
            sd["pos_embed"] = np.broadcast_to(np.float32(0), (1, pos.shape[1] + 1, pos.shape[2]))
        return sd

    def clip(arch):
        cfg = get_model_config(arch)
        return lambda: _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True)

    def mocov3(width, depth, heads):  # MoCo v3 vits.py: timm VisionTransformer, patch 16, eps 1e-6
        return lambda: timm.models.vision_transformer.VisionTransformer(
            patch_size=16,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4,
            qkv_bias=True,
            num_classes=0,
        )

    def moco_table(sd, v):
        return dict(sd, pos_embed=ref.moco_sincos(14, v.config.width).numpy())

    same = lambda sd, v: sd
    clip_layout = lambda sd, v: {f"visual.{k}": a for k, a in sd.items()}
    k_bias = lambda v: v.config.depth * v.config.width  # EVA has no key bias; ddjax stores zeros
    return {
        "dinov2_vits14": (timm_model("vit_small_patch14_dinov2"), dinov2, lambda v: 0),
        "dinov2_vitb14": (timm_model("vit_base_patch14_dinov2"), dinov2, lambda v: 0),
        "dinov2_vitl14": (timm_model("vit_large_patch14_dinov2"), dinov2, lambda v: 0),
        "dinov2_vits14_reg": (timm_model("vit_small_patch14_reg4_dinov2"), dinov2, lambda v: 0),
        "dinov2_vitb14_reg": (timm_model("vit_base_patch14_reg4_dinov2"), dinov2, lambda v: 0),
        "dinov2_vitl14_reg": (timm_model("vit_large_patch14_reg4_dinov2"), dinov2, lambda v: 0),
        "clip_vitb32": (clip("ViT-B-32"), clip_layout, lambda v: 0),
        "clip_vitb16": (clip("ViT-B-16"), clip_layout, lambda v: 0),
        "clip_vitl14": (clip("ViT-L-14"), clip_layout, lambda v: 0),
        "eva02_vitt14": (timm_model("eva02_tiny_patch14_224"), same, k_bias),
        "eva02_vits14": (timm_model("eva02_small_patch14_224"), same, k_bias),
        "eva02_vitb14": (timm_model("eva02_base_patch14_224"), same, k_bias),
        "eva02_vitl14": (timm_model("eva02_large_patch14_224"), same, k_bias),
        "mocov3_vits16": (mocov3(384, 12, 12), moco_table, lambda v: -197 * 384),  # table computed
        "mocov3_vitb16": (mocov3(768, 12, 12), moco_table, lambda v: -197 * 768),
        "mocov3_vitl16": (mocov3(1024, 24, 16), moco_table, lambda v: -197 * 1024),
        "dino_vits16": (timm_model("vit_small_patch16_224"), same, lambda v: 0),
        "dino_vits8": (timm_model("vit_small_patch8_224"), same, lambda v: 0),
        "dino_vitb16": (timm_model("vit_base_patch16_224"), same, lambda v: 0),
        "dino_vitb8": (timm_model("vit_base_patch8_224"), same, lambda v: 0),
    }


NAMED = [n for n in VARIANTS if not n.startswith("test_")]


@pytest.mark.parametrize("name", NAMED)
def test_named_variant_matches_reference_layout(ref, name):
    """The release layout of each named variant (keys and shapes from the reference library's
    full-size model) converts without a missing, unexpected or wrongly shaped key."""
    references = _reference_models(ref)
    assert set(references) == set(NAMED)
    build, layout, extra = references[name]
    with ref.torch.device("meta"):
        model = build()
    variant = get_variant(name)
    state = layout(ref.zeros_state_dict(model), variant)
    params, report = convert_state_dict(variant, state)
    n_ref = sum(int(np.prod(a.shape)) for k, a in state.items() if k not in ("mask_token",))
    assert param_count(variant.config) == n_ref + extra(variant)
    assert report["loaded_keys"] + sum(report["dropped"].values()) == len(state)
