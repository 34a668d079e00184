"""OpenAI CLIP's image tower against open_clip's ``VisionTransformer`` (the same network, the same
parameter names as OpenAI's release), through a full CLIP state dict (text tower dropped) and an
OpenAI-style TorchScript archive."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from ddjax.backbones import vit_backbone
from ddjax.backbones.vit_store import import_weights
from vit_helpers import register_tiny_variant

WIDTH, DEPTH, HEADS, PATCH, SIZE, EMBED = 64, 2, 4, 8, 32, 48
TOL = 1e-4


def tiny_clip(ref, seed=0):
    from open_clip.transformer import QuickGELU, VisionTransformer

    net = VisionTransformer(
        image_size=SIZE,
        patch_size=PATCH,
        width=WIDTH,
        layers=DEPTH,
        heads=HEADS,
        mlp_ratio=4,
        output_dim=EMBED,
        act_layer=QuickGELU,
    )
    return ref.randomize(net, seed=seed)


def register(name):
    register_tiny_variant(name, "clip", width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, grid=SIZE // PATCH, patch_bias=False,
                          pre_norm=True, norm_eps=1e-5, act="quick_gelu", proj_dim=EMBED)


def features(name, weights, x):
    backbone = vit_backbone(name, weights)
    assert backbone.feature_dim == EMBED
    return np.asarray(jax.jit(backbone.features)(backbone.variables, x))


def test_clip_state_dict_matches_open_clip(ref, images, tmp_path):
    torch = ref.torch
    net = tiny_clip(ref)
    full = {f"visual.{k}": v for k, v in net.state_dict().items()}
    # The text tower of a full CLIP state dict shares names with the image tower (minus 'visual.').
    full.update(
        {
            "positional_embedding": torch.randn(7, WIDTH),
            "token_embedding.weight": torch.randn(9, WIDTH),
            "transformer.resblocks.0.ln_1.weight": torch.ones(WIDTH),
            "ln_final.weight": torch.ones(WIDTH),
            "text_projection": torch.randn(WIDTH, EMBED),
            "logit_scale": torch.ones([]),
        }
    )
    path = ref.save(full, tmp_path / "ViT-tiny.pt")
    register("test_clip_tiny")
    x = images(6, SIZE)
    want = net(ref.nchw(x)).numpy()
    assert ref.rel_err(features("test_clip_tiny", path, x), want) < TOL

    summary = import_weights("test_clip_tiny", path, out=tmp_path / "converted")
    assert summary["dropped"] == {"outside the backbone (not under 'visual.')": 6}
    assert ref.rel_err(features("test_clip_tiny", tmp_path / "converted", x), want) < TOL


def test_clip_torchscript_archive_matches_open_clip(ref, images, tmp_path):
    torch = ref.torch
    net = tiny_clip(ref, seed=1)

    class Clip(torch.nn.Module):  # OpenAI ships CLIP as a TorchScript archive of the whole model
        def __init__(self, visual):
            super().__init__()
            self.visual = visual
            self.logit_scale = torch.nn.Parameter(torch.ones([]))

        def forward(self, x):
            return self.visual(x)

    x = images(3, SIZE, seed=5)
    with warnings.catch_warnings():  # torch.jit.trace is deprecated; OpenAI's files are traced
        warnings.simplefilter("ignore", DeprecationWarning)
        archive = torch.jit.trace(Clip(net).eval(), ref.nchw(x), check_trace=False)
    archive.save(str(tmp_path / "ViT-tiny-jit.pt"))
    register("test_clip_tiny_jit")
    want = net(ref.nchw(x)).numpy()
    assert ref.rel_err(features("test_clip_tiny_jit", tmp_path / "ViT-tiny-jit.pt", x), want) < TOL
