"""DINOv2 (torch hub layout, with and without registers) and DINO v1 against timm's
``VisionTransformer``, the network of both releases (DINOv2's registers are timm's ``reg_token``).

Weights are small and random, written in the official layouts and imported by ddjax. Off the
pre-training grid the reference's position table is resized as the hub code does (bicubic
``F.interpolate``: scale factor (g + 0.1) / G, or size g with antialiasing for registers).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from ddjax.backbones import vit_backbone
from vit_helpers import register_tiny_variant, timm_vit

WIDTH, DEPTH, HEADS, PATCH, GRID = 64, 2, 4, 4, 6  # pre-training grid 6 x 6 (24 px)
TOL = 1e-4


def hub_resize(ref, pos, grid, offset, antialias):
    """The hubs' interpolate_pos_encoding of a [1, 1 + G*G, D] table for a grid x grid input."""
    torch = ref.torch
    cls, patch = pos[:, :1], pos[:, 1:]
    side, dim = int(math.isqrt(patch.shape[1])), patch.shape[2]
    if grid == side:
        return pos
    patch = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    kwargs = {"scale_factor": ((grid + offset) / side,) * 2} if offset else {"size": (grid, grid)}
    patch = torch.nn.functional.interpolate(patch, mode="bicubic", antialias=antialias, **kwargs)
    assert patch.shape[-2:] == (grid, grid)
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


def tiny_timm(ref, size, **kwargs):
    return timm_vit(ref, size=size, width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, **kwargs)


def variant(name, family, resolution, **overrides):
    return register_tiny_variant(name, family, width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, grid=GRID,
                                 resolution=resolution, **overrides)


def features(name, weights, x):
    backbone = vit_backbone(name, weights)
    return np.asarray(jax.jit(backbone.features)(backbone.variables, x))


@pytest.mark.parametrize("resolution", [GRID * PATCH, 16, 32])
def test_dinov2_matches_timm(ref, images, tmp_path, resolution):
    torch = ref.torch
    net = ref.randomize(tiny_timm(ref, GRID * PATCH, init_values=1.0))
    hub = dict(net.state_dict())
    hub["mask_token"] = torch.randn(1, WIDTH)  # in every hub checkpoint, unused for features
    path = ref.save(hub, tmp_path / "dinov2_tiny_pretrain.pth")
    name = f"test_dinov2_tiny_{resolution}"
    variant(name, "dinov2", resolution, layer_scale=True, interp_offset=0.1, interp_antialias=False)

    want_net = tiny_timm(ref, resolution, init_values=1.0)
    sd = dict(net.state_dict())
    sd["pos_embed"] = hub_resize(ref, sd["pos_embed"], resolution // PATCH, 0.1, antialias=False)
    want_net.load_state_dict(sd)
    x = images(5, resolution)
    want = want_net.eval()(ref.nchw(x)).numpy()
    got = features(name, path, x)
    assert got.shape == (5, WIDTH)
    assert ref.rel_err(got, want) < TOL


@pytest.mark.parametrize("resolution", [GRID * PATCH, 16])
def test_dinov2_registers_match_timm(ref, images, tmp_path, resolution):
    torch = ref.torch
    net = ref.randomize(
        tiny_timm(ref, GRID * PATCH, init_values=1.0, reg_tokens=4, no_embed_class=True)
    )
    sd = dict(net.state_dict())
    # The hub layout: the class token's position is a row of pos_embed, registers get none.
    cls_pos = torch.randn(1, 1, WIDTH) * 0.3
    hub = {k: v for k, v in sd.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    hub.update(
        register_tokens=sd["reg_token"],
        cls_token=sd["cls_token"] - cls_pos,
        pos_embed=torch.cat([cls_pos, sd["pos_embed"]], dim=1),
        mask_token=torch.zeros(1, WIDTH),
    )
    path = ref.save(hub, tmp_path / "dinov2_tiny_reg.safetensors")
    name = f"test_dinov2_reg_tiny_{resolution}"
    variant(name, "dinov2", resolution, layer_scale=True, registers=4, interp_antialias=True)

    want_net = tiny_timm(ref, resolution, init_values=1.0, reg_tokens=4, no_embed_class=True)
    resized = hub_resize(ref, hub["pos_embed"], resolution // PATCH, 0.0, antialias=True)
    want_net.load_state_dict({**sd, "pos_embed": resized[:, 1:]})
    x = images(4, resolution, seed=1)
    want = want_net.eval()(ref.nchw(x)).numpy()
    assert ref.rel_err(features(name, path, x), want) < TOL


@pytest.mark.parametrize("resolution", [GRID * PATCH, 16])
def test_dino_v1_full_checkpoint_matches_timm(ref, images, tmp_path, resolution):
    torch = ref.torch
    net = ref.randomize(tiny_timm(ref, GRID * PATCH), seed=3)
    # A DINO full checkpoint: {'student': ..., 'teacher': {'backbone.*', 'head.*'}, ...}.
    teacher = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(32, WIDTH)
    torch.save(
        {"teacher": teacher, "student": {"backbone.cls_token": torch.zeros(1)}, "epoch": 3},
        tmp_path / "dino_full.pth",
    )
    name = f"test_dino_tiny_{resolution}"
    variant(name, "dino", resolution, interp_offset=0.1, interp_antialias=False)

    want_net = tiny_timm(ref, resolution)
    sd = dict(net.state_dict())
    sd["pos_embed"] = hub_resize(ref, sd["pos_embed"], resolution // PATCH, 0.1, antialias=False)
    want_net.load_state_dict(sd)
    x = images(3, resolution, seed=2)
    want = want_net.eval()(ref.nchw(x)).numpy()
    assert ref.rel_err(features(name, tmp_path / "dino_full.pth", x), want) < TOL
