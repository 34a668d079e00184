"""Which backbones an LGM run uses, by tag, and loading them with their declared sizes checked.

A config lists backbones as ``"tag=spec"`` or just ``"spec"`` (the tag is then the spec with every
character outside [A-Za-z0-9_-] replaced by '_'); ``spec`` is anything ``load_backbone`` accepts
(``ddjax:<teacher>``, an imported ViT's name, ...). An empty list means the pipeline's own
teacher artifact, tag ``teacher``. See docs/lgm.md#backbones.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp

from ddjax.artifacts.teacher import TEACHER, read_meta
from ddjax.backbones import Backbone, load_backbone  # the package registers the imported ViTs
from ddjax.errors import DdjaxError

_TAG_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def backbone_identity(spec: str) -> str:
    """What LGM's sets record as their backbone: a ddjax teacher by the digest of its weights (a
    moved workdir or a relative path still matches; another teacher at the same path does not),
    any other backbone by its spec."""
    family, _, argument = spec.partition(":")
    if family == "ddjax" and argument:
        return f"ddjax teacher {read_meta(argument)['sha256']}"
    return spec


def backbone_entries(specs, workdir: str | Path) -> list[tuple[str, str]]:
    """``[(tag, spec), ...]`` from a config's list (see the module docstring); tags are unique."""
    if not specs:
        return [("teacher", f"ddjax:{TEACHER.locate(workdir)}")]
    if isinstance(specs, str):
        specs = (specs,)
    entries = []
    for item in specs:
        tag, sep, spec = str(item).partition("=")
        if not sep:
            spec, tag = tag, re.sub(r"[^A-Za-z0-9_-]", "_", tag).strip("_")
        tag, spec = tag.strip(), spec.strip()
        if not spec or not _TAG_RE.match(tag):
            raise DdjaxError(f"bad backbone entry {item!r}; use 'spec' or 'tag=spec' with a tag of "
                             "letters, digits, '_' or '-'")
        entries.append((tag, spec))
    tags = [tag for tag, _ in entries]
    if len(set(tags)) != len(tags):
        raise DdjaxError(f"backbone tags must be unique, got {tags}; name them with 'tag=spec'")
    return entries


def check_backbone(backbone: Backbone) -> Backbone:
    """The backbone, after checking that its features are [N, feature_dim] at its resolution."""
    x = jax.ShapeDtypeStruct((2, backbone.resolution, backbone.resolution, 3), jnp.float32)
    try:
        out = jax.eval_shape(backbone.features, backbone.variables, x)
    except Exception as err:  # a wrongly built backbone: say which, on one line
        first_line = str(err).splitlines()[0] if str(err) else ""
        size = f"{backbone.resolution}x{backbone.resolution}"
        raise DdjaxError(f"backbone {backbone.name!r} fails on {size} images: "
                         f"{type(err).__name__}: {first_line}") from err
    if tuple(out.shape) != (2, backbone.feature_dim):
        raise DdjaxError(f"backbone {backbone.name!r} declares feature_dim {backbone.feature_dim} "
                         f"but its features have shape {tuple(out.shape[1:])} per image; fix the "
                         "backbone's feature_dim or its feature function")
    return backbone


def load_checked(spec: str) -> Backbone:
    """``load_backbone(spec)`` followed by ``check_backbone``."""
    return check_backbone(load_backbone(spec))
