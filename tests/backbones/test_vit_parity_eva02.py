"""EVA-02 against timm's ``Eva`` (the model and weights LGM loads): RoPE, SwiGLU, sub-LayerNorms,
mean-pooled patch tokens + ``fc_norm``; both of timm's key layouts (separate q/k/v projections with
the split SwiGLU of EVA-02 B/L, fused qkv with the packed SwiGLU of T/S); and other resolutions
(timm's dynamic image size: antialiased bicubic position table, RoPE rescaled to the trained
grid)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ddjax.backbones import vit_backbone
from ddjax.backbones.vit import ViTConfig
from ddjax.backbones.vit_configs import ViTVariant
from ddjax.backbones.vit_store import register_vit_variant

WIDTH, DEPTH, HEADS, PATCH, GRID = 64, 2, 4, 7, 4  # head dim 16: four RoPE frequencies per axis
TOL = 1e-4


def timm_eva(ref, sub_ln: bool):
    net = ref.timm.models.eva.Eva(
        img_size=GRID * PATCH,
        patch_size=PATCH,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4 * 2 / 3,
        qkv_fused=not sub_ln,
        swiglu_mlp=True,
        scale_mlp=sub_ln,
        scale_attn_inner=sub_ln,
        use_rot_pos_emb=True,
        ref_feat_shape=(GRID, GRID),
        num_classes=0,
        dynamic_img_size=True,
    )
    return ref.randomize(net, seed=7 if sub_ln else 8)


@pytest.mark.parametrize("sub_ln", [True, False], ids=["split-qkv-subln", "fused-qkv"])
def test_eva02_matches_timm(ref, images, tmp_path, sub_ln):
    net = timm_eva(ref, sub_ln)
    keys = set(net.state_dict())
    assert ("blocks.0.attn.q_proj.weight" in keys) == sub_ln and (
        "blocks.0.mlp.fc1_g.weight" in keys
    ) == sub_ln
    path = ref.save(net.state_dict(), tmp_path / "model.safetensors")
    name = f"test_eva02_tiny_{sub_ln}"
    cfg = ViTConfig(
        width=WIDTH,
        depth=DEPTH,
        heads=HEADS,
        patch=PATCH,
        mlp_hidden=int(WIDTH * 4 * 2 / 3),
        pos_grid=GRID,
        act="swiglu",
        mlp_norm=sub_ln,
        attn_norm=sub_ln,
        rope=True,
        final_norm=False,
        pool="avg",
        fc_norm=True,
    )
    register_vit_variant(ViTVariant(name, "eva02", cfg, resolution=GRID * PATCH))
    backbone = vit_backbone(name, path)
    run = jax.jit(backbone.features)
    for size, n in ((GRID * PATCH, 5), (6 * PATCH, 3), (3 * PATCH, 2)):
        x = images(n, size, seed=size)
        want = net(ref.nchw(x)).numpy()
        got = np.asarray(run(backbone.variables, x))
        assert ref.rel_err(got, want) < TOL, size


def test_eva02_mim_pretraining_layout_loads_as_timm_does(ref, images, tmp_path):
    """EVA-02's own masked-image-modelling checkpoint names (``mlp.w1/w2/w3``, ``mlp.ffn_ln``,
    ``attn.inner_attn_ln``, ``q_bias``/``v_bias``, a final ``norm`` with ``mask_token`` and
    ``lm_head``): timm loads that ``norm`` as ``fc_norm``, and so does ddjax."""
    torch = ref.torch
    net = timm_eva(ref, sub_ln=True)
    names = [("fc_norm.", "norm."), ("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"),
             ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"), ("attn.norm", "attn.inner_attn_ln"),
             ("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias")]
    original = {}
    for key, value in net.state_dict().items():
        for new, old in names:
            key = key.replace(new, old)
        original[key] = value
    original["mask_token"] = torch.zeros(1, 1, WIDTH)
    original["lm_head.weight"] = torch.randn(8, WIDTH)
    original["rope.freqs_cos"] = torch.ones(GRID * GRID, 16)
    assert "blocks.0.mlp.w1.weight" in original and "norm.weight" in original
    path = ref.save(original, tmp_path / "eva02_tiny_pt.pth")
    cfg = ViTConfig(width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, pos_grid=GRID,
                    mlp_hidden=int(WIDTH * 4 * 2 / 3), act="swiglu", mlp_norm=True, attn_norm=True,
                    rope=True, final_norm=False, pool="avg", fc_norm=True)
    register_vit_variant(ViTVariant("test_eva02_tiny_mim", "eva02", cfg, resolution=GRID * PATCH))
    backbone = vit_backbone("test_eva02_tiny_mim", path)
    x = images(3, GRID * PATCH, seed=9)
    want = net(ref.nchw(x)).numpy()
    assert ref.rel_err(np.asarray(backbone.features(backbone.variables, x)), want) < TOL
