"""MoCo v3 against timm's ``VisionTransformer`` with MoCo's fixed 2-D sin-cos position table (MoCo's
``VisionTransformerMoCo`` is that subclass), through MoCo's own checkpoint layout (``state_dict``
with ``module.base_encoder.`` / ``module.momentum_encoder.`` / ``module.predictor.``) and the
``convert_to_deit.py`` output; at other resolutions the table is MoCo's formula on the new grid."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ddjax.backbones import vit_backbone
from ddjax.errors import DdjaxError
from vit_helpers import register_tiny_variant, timm_vit

WIDTH, DEPTH, HEADS, PATCH, GRID = 64, 2, 4, 4, 6
TOL = 1e-4


def moco_vit(ref, grid, seed=0, net=None):
    model = timm_vit(ref, size=grid * PATCH, width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH)
    if net is None:
        ref.randomize(model, seed=seed)
    else:
        model.load_state_dict(
            {k: v for k, v in net.state_dict().items() if k != "pos_embed"}, strict=False
        )
    model.pos_embed.data.copy_(ref.moco_sincos(grid, WIDTH))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_variant():
    return register_tiny_variant("test_mocov3_tiny", "mocov3", width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, grid=GRID,
                                 pos_embed="sincos").name


def test_mocov3_checkpoint_matches_timm(ref, images, tmp_path, tiny_variant):
    torch = ref.torch
    net = moco_vit(ref, GRID)
    state = {f"module.base_encoder.{k}": v for k, v in net.state_dict().items()}
    state.update(
        {
            "module.base_encoder.head.0.weight": torch.randn(32, WIDTH),
            "module.momentum_encoder.cls_token": torch.randn(1, 1, WIDTH),
            "module.predictor.0.weight": torch.randn(16, 32),
        }
    )
    torch.save(
        {"epoch": 300, "arch": "vit_tiny", "state_dict": state}, tmp_path / "vit-tiny-300ep.pth.tar"
    )
    backbone = vit_backbone(tiny_variant, tmp_path / "vit-tiny-300ep.pth.tar")
    run = jax.jit(backbone.features)
    for grid, n in ((GRID, 4), (4, 3), (8, 2)):
        want_net = net if grid == GRID else moco_vit(ref, grid, net=net)
        x = images(n, grid * PATCH, seed=grid)
        want = want_net(ref.nchw(x)).numpy()
        assert ref.rel_err(np.asarray(run(backbone.variables, x)), want) < TOL, grid


def test_mocov3_deit_format_and_wrong_table(ref, images, tmp_path, tiny_variant):
    torch = ref.torch
    net = moco_vit(ref, GRID, seed=4)
    torch.save({"model": net.state_dict()}, tmp_path / "linear-vit-tiny.pth.tar")
    x = images(2, GRID * PATCH)
    backbone = vit_backbone(tiny_variant, tmp_path / "linear-vit-tiny.pth.tar")
    got = np.asarray(backbone.features(backbone.variables, x))
    assert ref.rel_err(got, net(ref.nchw(x)).numpy()) < TOL

    learned = dict(net.state_dict())
    learned["pos_embed"] = learned["pos_embed"] + 0.01 * torch.randn_like(learned["pos_embed"])
    ref.save(learned, tmp_path / "learned.pth")
    with pytest.raises(DdjaxError, match="sin-cos"):
        vit_backbone(tiny_variant, tmp_path / "learned.pth")
