"""Official ViT weights -> ddjax parameters: convert a state dict strictly.

The state dict comes from ``ddjax.models.state_dict_files.read_state_dict`` (nothing is
downloaded). Each family (``dinov2``, ``dino``, ``mocov3``, ``clip``, ``eva02``; layouts in
``vit_configs.SOURCES``) lists every key the backbone needs and its Flax parameter; a missing,
unexpected or misshapen key is an error naming it, so nothing is ever loaded partially. Keys
outside the feature (text towers, momentum encoders, heads, mask tokens) are dropped and reported.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from ddjax.backbones.vit import ViTConfig, param_shapes, sincos_table
from ddjax.backbones.vit_configs import ViTVariant
from ddjax.errors import DdjaxError

_TORCHSCRIPT_METADATA = ("input_resolution", "context_length", "vocab_size")
# Candidate prefixes in front of a backbone's keys, tried in this order.
_PREFIXES = ("", "module.base_encoder.", "base_encoder.", "module.", "backbone.", "visual.",
             "model.", "encoder.")


# ---------------------------------------------------------------------------------------------
# Key maps: every source key of a family's layout, and the Flax parameter it becomes.


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: tuple[str, ...]  # Flax parameter path; under ("blocks", ...) one entry per block
    sources: tuple[str, ...]  # state-dict keys (relative to the block prefix for block entries)
    fn: Callable[..., np.ndarray] = lambda a: a


def _linear(path, key, bias=True):
    out = [_Entry((*path, "kernel"), (f"{key}.weight",), lambda w: w.T)]
    if bias:
        out.append(_Entry((*path, "bias"), (f"{key}.bias",)))
    return out


def _layernorm(path, key):
    return [_Entry((*path, "scale"), (f"{key}.weight",)), _Entry((*path, "bias"), (f"{key}.bias",))]


def _conv_kernel(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _timm_vit_maps(cfg: ViTConfig, sd: dict) -> tuple[list, list]:
    """DINO, DINOv2 (torch hub) and MoCo-v3 / timm VisionTransformer keys."""
    top = [
        _Entry(("cls_token",), ("cls_token",)),
        _Entry(("patch_embed", "kernel"), ("patch_embed.proj.weight",), _conv_kernel),
        _Entry(("patch_embed", "bias"), ("patch_embed.proj.bias",)),
    ]
    if cfg.pos_embed == "learned":
        top.append(_Entry(("pos_embed",), ("pos_embed",)))
    if cfg.registers:
        top.append(_Entry(("reg_tokens",), ("register_tokens",)))
    top += _layernorm(("norm",), "norm")
    block = (
        _layernorm(("norm1",), "norm1")
        + _linear(("attn", "qkv"), "attn.qkv")
        + _linear(("attn", "proj"), "attn.proj")
        + _layernorm(("norm2",), "norm2")
        + _linear(("mlp", "fc1"), "mlp.fc1")
        + _linear(("mlp", "fc2"), "mlp.fc2")
    )
    if cfg.layer_scale:
        block += [_Entry(("ls1",), ("ls1.gamma",)), _Entry(("ls2",), ("ls2.gamma",))]
    return top, block


def _clip_maps(cfg: ViTConfig, sd: dict) -> tuple[list, list]:
    """OpenAI CLIP's ``visual`` tower (also open_clip's names for the same network)."""
    top = [
        _Entry(("patch_embed", "kernel"), ("conv1.weight",), _conv_kernel),
        _Entry(("cls_token",), ("class_embedding",), lambda a: a.reshape(1, 1, -1)),
        _Entry(("pos_embed",), ("positional_embedding",), lambda a: a[None]),
        _Entry(("proj",), ("proj",)),
    ]
    top += _layernorm(("norm_pre",), "ln_pre") + _layernorm(("norm",), "ln_post")
    block = (
        _layernorm(("norm1",), "ln_1")
        + [
            _Entry(("attn", "qkv", "kernel"), ("attn.in_proj_weight",), lambda w: w.T),
            _Entry(("attn", "qkv", "bias"), ("attn.in_proj_bias",)),
        ]
        + _linear(("attn", "proj"), "attn.out_proj")
        + _layernorm(("norm2",), "ln_2")
        + _linear(("mlp", "fc1"), "mlp.c_fc")
        + _linear(("mlp", "fc2"), "mlp.c_proj")
    )
    return top, block


def _eva02_maps(cfg: ViTConfig, sd: dict) -> tuple[list, list]:
    """timm Eva: fused ``qkv`` + ``q_bias``/``v_bias`` or separate ``q_proj``/``k_proj``/``v_proj``
    (no key bias either way), SwiGLU as one ``fc1`` [gate | value] or ``fc1_g``/``fc1_x`` (with the
    MLP sub-LayerNorm); the layout present in the file is the one required, in full."""
    top = [
        _Entry(("cls_token",), ("cls_token",)),
        _Entry(("pos_embed",), ("pos_embed",)),
        _Entry(("patch_embed", "kernel"), ("patch_embed.proj.weight",), _conv_kernel),
        _Entry(("patch_embed", "bias"), ("patch_embed.proj.bias",)),
    ]
    top += _layernorm(("fc_norm",), "fc_norm")

    def qkv_bias(q, v):
        return np.concatenate([q, np.zeros_like(q), v])

    block = _layernorm(("norm1",), "norm1") + _layernorm(("norm2",), "norm2")
    if "blocks.0.attn.qkv.weight" in sd:
        block += [
            _Entry(("attn", "qkv", "kernel"), ("attn.qkv.weight",), lambda w: w.T),
            _Entry(("attn", "qkv", "bias"), ("attn.q_bias", "attn.v_bias"), qkv_bias),
        ]
    else:
        block += [
            _Entry(
                ("attn", "qkv", "kernel"),
                ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"),
                lambda q, k, v: np.concatenate([q, k, v]).T,
            ),
            _Entry(("attn", "qkv", "bias"), ("attn.q_proj.bias", "attn.v_proj.bias"), qkv_bias),
        ]
    block += _linear(("attn", "proj"), "attn.proj") + _linear(("mlp", "fc2"), "mlp.fc2")
    if cfg.attn_norm:
        block += _layernorm(("attn", "norm"), "attn.norm")
    if cfg.mlp_norm:
        block += _layernorm(("mlp", "norm"), "mlp.norm")
    if "blocks.0.mlp.fc1_g.weight" in sd:
        block += [
            _Entry(
                ("mlp", "fc1", "kernel"),
                ("mlp.fc1_g.weight", "mlp.fc1_x.weight"),
                lambda g, x: np.concatenate([g, x]).T,
            ),
            _Entry(
                ("mlp", "fc1", "bias"),
                ("mlp.fc1_g.bias", "mlp.fc1_x.bias"),
                lambda g, x: np.concatenate([g, x]),
            ),
        ]
    else:
        block += _linear(("mlp", "fc1"), "mlp.fc1")
    if cfg.layer_scale:
        block += [_Entry(("ls1",), ("gamma_1",)), _Entry(("ls2",), ("gamma_2",))]
    return top, block


_EVA_NAMES = (
    ("mlp.ffn_ln", "mlp.norm"), ("attn.inner_attn_ln", "attn.norm"), ("mlp.w12", "mlp.fc1"),
    ("mlp.w1", "mlp.fc1_g"), ("mlp.w2", "mlp.fc1_x"), ("mlp.w3", "mlp.fc2"),
)


def _eva02_rename(sd: dict) -> dict:
    """EVA-02's original names as timm reads them. A masked-image-modelling checkpoint (it has a
    ``mask_token``; timm's ``eva02_*.mim_in22k``) keeps its final LayerNorm as ``norm``, which timm
    loads as ``fc_norm``, the norm of LGM's feature; with separate q/k/v projections the query and
    value biases ``q_bias``/``v_bias`` are those projections' biases."""
    mim = "mask_token" in sd and "fc_norm.weight" not in sd
    separate = "blocks.0.attn.q_proj.weight" in sd
    out = {}
    for name, value in sd.items():
        key = "fc_" + name if mim and name in ("norm.weight", "norm.bias") else name
        for old, new in _EVA_NAMES:
            key = key.replace(old, new)
        if separate:
            key = key.replace("attn.q_bias", "attn.q_proj.bias")
            key = key.replace("attn.v_bias", "attn.v_proj.bias")
        if key in out:
            raise DdjaxError(f"{name} and another key both mean {key}; nothing was loaded")
        out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class _Family:
    anchor: str  # a key every checkpoint of the family has, to find the backbone's prefix
    block_prefix: str  # block i's keys start with block_prefix.format(i)
    maps: Callable[[ViTConfig, dict], tuple[list, list]]
    droppable: tuple[tuple[str, str], ...] = ()  # (key prefix, reason) dropped inside the backbone
    rename: Callable[[dict], dict] | None = None  # other spellings of the layout -> the map's names


_HEAD = ("head.", "head (not part of the feature)")
_MASK = ("mask_token", "mask token (masked-image pre-training only)")
FAMILIES = {
    "dinov2": _Family("patch_embed.proj.weight", "blocks.{}.", _timm_vit_maps, (_MASK, _HEAD)),
    "dino": _Family("patch_embed.proj.weight", "blocks.{}.", _timm_vit_maps, (_HEAD,)),
    "mocov3": _Family("patch_embed.proj.weight", "blocks.{}.", _timm_vit_maps,
                      (("head.", "head / projector (not part of the feature)"),)),
    "clip": _Family("conv1.weight", "transformer.resblocks.{}.", _clip_maps),
    "eva02": _Family("patch_embed.proj.weight", "blocks.{}.", _eva02_maps,
                     (_MASK, ("lm_head.", "masked-image-modelling head"), _HEAD,
                      ("rope.", "RoPE buffer (recomputed)")), _eva02_rename),
}


def _name_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _select_backbone(family: str, sd: dict) -> tuple[dict, dict[str, int]]:
    """The backbone's own keys (prefix stripped, renamed) and the count of each kind dropped."""
    fam = FAMILIES[family]
    prefix = next((p for p in _PREFIXES if p + fam.anchor in sd), None)
    if prefix is None:
        raise DdjaxError(
            f"no {fam.anchor!r} (nor under the prefixes {', '.join(map(repr, _PREFIXES[1:]))})"
            f": not a {family} checkpoint? Its keys: {_name_keys(sd)}; nothing was loaded"
        )
    dropped: dict[str, int] = {}

    def drop(reason):
        dropped[reason] = dropped.get(reason, 0) + 1

    inside = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            drop(f"outside the backbone (not under {prefix!r})")
        elif key in _TORCHSCRIPT_METADATA:
            drop("TorchScript metadata")
        else:
            inside[key[len(prefix):]] = value
    kept = {}
    for key, value in (fam.rename(inside) if fam.rename else inside).items():
        reason = next((why for start, why in fam.droppable if key.startswith(start)), None)
        if reason is None:
            kept[key] = value
        else:
            drop(reason)
    return kept, dropped


def convert_state_dict(variant: ViTVariant, state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """``(params, report)``: Flax ``params`` of ``ViT(variant.config)`` from an official state dict.

    Raises DdjaxError naming every missing, unexpected or wrongly shaped key; ``report`` says how
    many keys of each kind outside the backbone were dropped.
    """
    cfg, fam = variant.config, FAMILIES[variant.family]
    sd, dropped = _select_backbone(variant.family, state_dict)
    top, block = fam.maps(cfg, sd)
    block_keys = [
        [fam.block_prefix.format(i) + s for e in block for s in e.sources] for i in range(cfg.depth)
    ]
    wanted = {s for e in top for s in e.sources} | {k for keys in block_keys for k in keys}
    if cfg.pos_embed == "sincos":
        wanted.add("pos_embed")  # a fixed table: checked against the formula below, not loaded
    missing, unexpected = wanted - sd.keys(), sd.keys() - wanted
    if missing or unexpected:
        parts = [
            f"missing {_name_keys(missing)}" if missing else "",
            f"unexpected {_name_keys(unexpected)}" if unexpected else "",
        ]
        raise DdjaxError(
            f"{variant.name} ({variant.family} layout): "
            + "; ".join(p for p in parts if p)
            + "; nothing was loaded"
        )

    shapes = param_shapes(cfg)
    wrong: list[str] = []
    flat: dict[tuple, np.ndarray] = {}

    def build(entry: _Entry, keys: list[str], want: tuple) -> np.ndarray | None:
        arrays = [np.asarray(sd[k], np.float32) for k in keys]
        try:
            value = entry.fn(*arrays)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != tuple(want):
            got = ", ".join(f"{k} {tuple(a.shape)}" for k, a in zip(keys, arrays))
            wrong.append(f"{got} (needs {'/'.join(entry.path)} {tuple(want)})")
            return None
        return value

    for entry in top:
        flat[entry.path] = build(entry, list(entry.sources), _lookup(shapes, entry.path).shape)
    for entry in block:
        want = _lookup(shapes, ("blocks", *entry.path)).shape[1:]
        layers = [
            build(entry, [fam.block_prefix.format(i) + s for s in entry.sources], want)
            for i in range(cfg.depth)
        ]
        if all(layer is not None for layer in layers):
            flat[("blocks", *entry.path)] = np.stack(layers)
    if wrong:
        raise DdjaxError(
            f"{variant.name}: wrong shapes: {'; '.join(wrong[:6])}"
            f"{f' ... ({len(wrong)} in all)' if len(wrong) > 6 else ''}; nothing was loaded"
        )
    if cfg.pos_embed == "sincos":
        _check_sincos(variant, sd["pos_embed"])

    params: dict = {}
    for path, value in flat.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    check_params(variant, params)
    return params, {"dropped": dropped, "loaded_keys": len(wanted)}


def _lookup(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _check_sincos(variant: ViTVariant, table: np.ndarray) -> None:
    cfg = variant.config
    grid = (cfg.pos_grid, cfg.pos_grid)
    expected = np.concatenate([np.zeros((1, cfg.width), np.float32), sincos_table(grid, cfg.width)])
    if tuple(np.shape(table)) != (1, *expected.shape):
        raise DdjaxError(
            f"{variant.name}: pos_embed has shape {tuple(np.shape(table))}, the fixed sin-cos "
            f"table of a {grid[0]}x{grid[1]} grid has {(1, *expected.shape)}; nothing was loaded"
        )
    err = float(np.abs(np.asarray(table, np.float32)[0] - expected).max())
    if err > 1e-4:
        raise DdjaxError(
            f"{variant.name}: pos_embed is not MoCo v3's fixed 2-D sin-cos table (max "
            f"difference {err:.3g}); ddjax computes that table, so these weights do not "
            "fit this variant; nothing was loaded"
        )


def _shapes_by_path(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_params(variant: ViTVariant, params: dict) -> None:
    """The tree has exactly the module's parameters and shapes, else DdjaxError naming the rest."""
    want = _shapes_by_path(param_shapes(variant.config))
    got = _shapes_by_path(params)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
        shown = ", ".join(f"{k} (expected {want.get(k)}, got {got.get(k)})" for k in bad[:4])
        more = f" ... ({len(bad)} in all)" if len(bad) > 4 else ""
        raise DdjaxError(f"{variant.name}: parameters do not fit the module: {shown}{more}; "
                         "nothing was loaded")
