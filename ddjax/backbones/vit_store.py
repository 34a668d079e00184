"""Converted ViT weights on disk, and the ViT ``Backbone`` objects built from them.

``ddjax backbone import NAME FILE`` converts an official weights file once and stores it as an
artifact (``ddjax.artifacts.backbone``: params, and a meta with the configuration, source file and
SHA-256, dropped keys) in ``$DDJAX_BACKBONE_DIR/NAME`` (default ``~/.cache/ddjax/backbones/NAME``). ``load_backbone("NAME")``
finds it there; ``load_backbone("NAME:PATH")`` takes a converted directory or a raw weights file.
Importing this module registers every named variant and LGM's aliases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from ddjax.artifacts.backbone import BACKBONE
from ddjax.backbones.registry import Backbone, register_family
from ddjax.backbones.vit import ViT, param_count
from ddjax.backbones.vit_configs import (ALIASES, IMAGENET_MEAN, IMAGENET_STD, VARIANTS, ViTVariant,
                                         get_variant)
from ddjax.backbones.weights import FAMILIES, check_params, convert_state_dict
from ddjax.errors import DdjaxError
from ddjax.models.state_dict_files import read_state_dict

def backbone_dir() -> Path:
    """Where ``ddjax backbone import`` puts converted backbones: ``$DDJAX_BACKBONE_DIR`` or
    ``~/.cache/ddjax/backbones``."""
    env = os.environ.get("DDJAX_BACKBONE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ddjax" / "backbones"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_weights(name: str, source: str | Path, out: str | Path | None = None) -> dict:
    """Convert the official weights file ``source`` for backbone ``name`` and store the result in
    ``out`` (default ``backbone_dir()/<name>``). Refuses to overwrite. Returns a summary dict."""
    variant = get_variant(name)
    source = Path(source)
    target = Path(out) if out is not None else backbone_dir() / variant.name
    if BACKBONE.is_complete(target):
        raise DdjaxError(f"{target} already exists; remove it to import again, or pass --out DIR")
    params, report = convert_state_dict(variant, read_state_dict(source))
    meta = {
        "name": variant.name,
        "family": variant.family,
        "config": dataclasses.asdict(variant.config),
        "source": str(source.absolute()),
        "source_sha256": _sha256(source),
        "params": param_count(variant.config),
        **report,
    }
    BACKBONE.write(target, meta, params)
    return {
        "imported": variant.name,
        "to": str(target.absolute()),
        **{k: meta[k] for k in ("family", "params", "loaded_keys", "dropped", "source_sha256")},
    }


def _load_converted(variant: ViTVariant, directory: Path) -> dict:
    params, meta = BACKBONE.read(directory)
    BACKBONE.check(meta, {"name": variant.name, "config": dataclasses.asdict(variant.config)},
                   directory)
    check_params(variant, params)
    return params


def load_params(variant: ViTVariant, weights: str | Path | None = None) -> dict:
    """The converted ``params`` of ``variant`` from ``weights`` (a converted directory or a raw
    file) or, when None, from ``backbone_dir()/<name>``."""
    if weights is None:
        path = backbone_dir() / variant.name
        if not path.exists():
            raise DdjaxError(
                f"backbone {variant.name!r} has no imported weights in {backbone_dir()}; "
                f"run `ddjax backbone import {variant.name} FILE` with the official weights "
                f"(`ddjax backbone info {variant.name}` names them), or give {variant.name}:PATH"
            )
    else:
        path = Path(weights)
    if path.is_dir():
        return _load_converted(variant, path)
    if not path.exists():
        raise DdjaxError(f"weights {path} for backbone {variant.name!r} do not exist")
    return convert_state_dict(variant, read_state_dict(path))[0]


# ---------------------------------------------------------------------------------------------
# Backbones.


def vit_backbone(
    name: str,
    weights: str | Path | None = None,
    *,
    dtype: Any = jnp.float32,
    remat: bool = True,
    normalization: str = "imagenet",
) -> Backbone:
    """The ViT backbone ``name`` with its weights (see ``load_params``).

    ``dtype`` is the computation dtype (``jnp.bfloat16``: faster on GPU/TPU, approximate; not
    faster on CPU, where XLA has no fast bfloat16 matmul);
    ``remat`` checkpoints each block (LGM's backward pass to the images then stores one block's
    activations at a time; no cost for a forward pass). ``normalization`` is ``"imagenet"`` (LGM's
    choice for every backbone) or ``"native"`` (the model's own preprocessing constants).
    """
    variant = get_variant(name)
    if normalization not in ("imagenet", "native"):
        raise DdjaxError(f"normalization must be 'imagenet' or 'native', not {normalization!r}")
    params = jax.tree.map(jnp.asarray, load_params(variant, weights))
    module = ViT(variant.config, dtype=jnp.dtype(dtype), remat=remat)

    def features(variables, x):
        return module.apply(variables, x)

    native = normalization == "native"
    return Backbone(
        name=variant.name,
        features=features,
        variables={"params": params},
        resolution=variant.resolution,
        mean=variant.native_mean if native else IMAGENET_MEAN,
        std=variant.native_std if native else IMAGENET_STD,
        feature_dim=variant.config.feature_dim,
    )


def _load_spec(spec: str) -> Backbone:
    name, _, path = spec.partition(":")
    return vit_backbone(name, path or None)


def register_vit_variant(variant: ViTVariant) -> None:
    """Add a named variant (e.g. a small test configuration) to the ViT and backbone registries."""
    if variant.family not in FAMILIES:
        raise DdjaxError(f"unknown family {variant.family!r}; known: {', '.join(FAMILIES)}")
    VARIANTS[variant.name] = variant
    register_family(variant.name, _load_spec, names=(variant.name,))


def backbone_info(name: str) -> dict:
    """What ``ddjax backbone info NAME`` prints: architecture, feature, normalisation, weights."""
    variant = get_variant(name)
    cfg = variant.config
    imported = backbone_dir() / variant.name
    grid = variant.resolution // cfg.patch
    return {
        "name": variant.name,
        "family": variant.family,
        "aliases": sorted(a for a, n in ALIASES.items() if n == variant.name),
        "resolution": variant.resolution,
        "native_resolution": variant.native_resolution,
        "patch": cfg.patch,
        "tokens": cfg.num_prefix + grid * grid,
        "width": cfg.width,
        "depth": cfg.depth,
        "heads": cfg.heads,
        "params": param_count(cfg),
        "feature": variant.feature,
        "feature_dim": cfg.feature_dim,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "native_mean": variant.native_mean,
        "native_std": variant.native_std,
        "weights": str(imported) if BACKBONE.is_complete(imported) else None,
        "official_weights": variant.source,
    }


for _name in (*VARIANTS, *ALIASES):
    register_family(_name, _load_spec, names=(_name,))
