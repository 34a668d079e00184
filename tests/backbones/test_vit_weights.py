"""Weight import: the CLI round trip, the default store, file formats, and strictness (every
missing, unexpected or wrongly shaped key is named; nothing is ever loaded partially)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ddjax import cli
from ddjax.backbones import load_backbone
from ddjax.backbones.vit_configs import ViTVariant
from ddjax.backbones.vit_store import import_weights, register_vit_variant
from ddjax.backbones.weights import convert_state_dict
from ddjax.errors import DdjaxError
from ddjax.models.state_dict_files import read_state_dict
from vit_helpers import register_tiny_variant, timm_vit

WIDTH, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 4, 4
VARIANT = register_tiny_variant("test_weights_dinov2", "dinov2", width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, grid=GRID,
                                layer_scale=True, interp_offset=0.1, interp_antialias=False)
CFG = VARIANT.config


@pytest.fixture(scope="module")
def dinov2(ref):
    """(timm reference network, its hub-layout state dict as numpy)."""
    net = timm_vit(ref, size=GRID * PATCH, width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH, init_values=1.0)
    ref.randomize(net, seed=11)
    hub = {k: v.numpy() for k, v in net.state_dict().items()}
    hub["mask_token"] = np.zeros((1, WIDTH), np.float32)
    return net, hub


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_then_load_by_name(ref, dinov2, images, tmp_path, monkeypatch, capsys):
    net, hub = dinov2
    monkeypatch.setenv("DDJAX_BACKBONE_DIR", str(tmp_path / "store"))
    raw = ref.save(
        {k: ref.torch.from_numpy(v) for k, v in hub.items()}, tmp_path / "tiny_pretrain.pth"
    )

    with pytest.raises(DdjaxError, match="ddjax backbone import test_weights_dinov2"):
        load_backbone("test_weights_dinov2")
    code, out, _ = _cli(capsys, "backbone", "import", "test_weights_dinov2", raw)
    assert code == 0
    summary = json.loads(out)
    assert summary["to"] == str(tmp_path / "store" / "test_weights_dinov2")
    assert summary["dropped"] == {"mask token (masked-image pre-training only)": 1}

    x = images(3, GRID * PATCH)
    want = net(ref.nchw(x)).numpy()
    for spec in (
        "test_weights_dinov2",
        f"test_weights_dinov2:{summary['to']}",
        f"test_weights_dinov2:{raw}",
    ):
        backbone = load_backbone(spec)
        assert backbone.resolution == GRID * PATCH and backbone.feature_dim == WIDTH
        assert ref.rel_err(np.asarray(backbone.features(backbone.variables, x)), want) < 1e-4
    assert backbone.mean == (
        0.485,
        0.456,
        0.406,
    )  # ImageNet constants, as LGM uses for every backbone

    code, out, _ = _cli(capsys, "backbone", "info", "test_weights_dinov2")
    assert code == 0 and json.loads(out)["weights"] == summary["to"]
    code, _, err = _cli(capsys, "backbone", "import", "test_weights_dinov2", raw)
    assert code == 2 and "already exists" in err and err.count("\n") == 1


def test_info_of_named_backbones(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DDJAX_BACKBONE_DIR", str(tmp_path))
    code, out, _ = _cli(capsys, "backbone", "info", "dinov2_vitb")
    info = json.loads(out)
    assert code == 0 and info["name"] == "dinov2_vitb14" and info["weights"] is None
    assert (info["params"], info["tokens"], info["feature_dim"]) == (86_579_712, 257, 768)
    code, out, _ = _cli(capsys, "backbone", "info")
    listing = json.loads(out)
    assert {
        "dinov2_vitb14",
        "clip_vitb32",
        "clip_vitb16",
        "eva02_vitb14",
        "mocov3_vitb16",
        "dino_vitb16",
    } <= set(listing["backbones"]) and listing["aliases"]["clip_vitb"] == "clip_vitb32"
    code, _, err = _cli(capsys, "backbone", "info", "vit_huge")
    assert code == 2 and "unknown ViT backbone 'vit_huge'" in err and err.count("\n") == 1


def _error(state) -> str:
    with pytest.raises(DdjaxError) as info:
        convert_state_dict(VARIANT, state)
    message = str(info.value)
    assert "\n" not in message and "nothing was loaded" in message
    return message


def test_missing_unexpected_and_misshapen_keys_are_named(dinov2):
    _, hub = dinov2
    state = {k: v for k, v in hub.items() if k != "blocks.1.attn.qkv.bias"}
    state["blocks.1.attn.qkv.scale"] = np.ones(3 * WIDTH, np.float32)
    message = _error(state)
    assert (
        "missing blocks.1.attn.qkv.bias" in message
        and "unexpected blocks.1.attn.qkv.scale" in message
    )

    deeper = dict(
        hub, **{k.replace("blocks.1.", "blocks.2."): v for k, v in hub.items() if "blocks.1." in k}
    )
    assert "unexpected blocks.2." in _error(deeper)

    misshapen = dict(hub)
    misshapen["blocks.0.mlp.fc1.weight"] = hub["blocks.0.mlp.fc1.weight"].T
    misshapen["pos_embed"] = hub["pos_embed"][:, :-1]
    message = _error(misshapen)
    assert "blocks.0.mlp.fc1.weight (32, 128)" in message and "pos_embed (1, 16, 32)" in message

    assert "not a dinov2 checkpoint" in _error({"conv1.weight": np.zeros((4, 3, 2, 2), np.float32)})


def test_file_formats(ref, dinov2, tmp_path):
    torch = ref.torch
    _, hub = dinov2
    params, _ = convert_state_dict(VARIANT, hub)
    for path in (tmp_path / "w.npz", tmp_path / "w.safetensors", tmp_path / "w.bin"):
        ref.save({k: torch.from_numpy(v) for k, v in hub.items()}, path)
        again, _ = convert_state_dict(VARIANT, read_state_dict(path))
        jax.tree.map(np.testing.assert_array_equal, again, params)
    # bfloat16 safetensors (numpy has no bfloat16): read through torch, values rounded to bfloat16.
    ref.save(
        {k: torch.from_numpy(v).bfloat16() for k, v in hub.items()}, tmp_path / "bf16.safetensors"
    )
    bf16 = read_state_dict(tmp_path / "bf16.safetensors")
    assert bf16["cls_token"].dtype == np.float32
    np.testing.assert_allclose(bf16["cls_token"], hub["cls_token"], rtol=1e-2, atol=1e-2)

    with pytest.raises(DdjaxError, match="unsupported weights file type '.ckpt'"):
        (tmp_path / "w.ckpt").write_bytes(b"x")
        read_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(DdjaxError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(DdjaxError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_converted_copy_of_another_variant_is_refused(ref, dinov2, tmp_path):
    _, hub = dinov2
    np.savez(tmp_path / "w.npz", **hub)
    import_weights("test_weights_dinov2", tmp_path / "w.npz", out=tmp_path / "copy")
    other = ViTVariant("test_weights_dinov2_b", "dinov2", CFG, resolution=GRID * PATCH)
    register_vit_variant(other)
    with pytest.raises(DdjaxError, match="import the weights again"):
        load_backbone(f"test_weights_dinov2_b:{tmp_path / 'copy'}")
