"""The backbone registry: names (or ``family:argument`` strings) to loaded ``Backbone`` objects.

Families register a loader with ``register_family``. Built in: ``ddjax``, a teacher artifact
written by ``ddjax teacher`` (``ddjax:<teacher dir>``), normalised with the constants of the
dataset it was trained on. Imported ViTs register their names in ``ddjax.backbones.vit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ddjax.errors import DdjaxError

FeatureFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen feature extractor.

    ``features(variables, x)`` takes images already normalised with ``mean``/``std`` at
    ``resolution`` x ``resolution`` (NHWC float) and returns ``[N, feature_dim]``; it is a pure
    function, so callers jit, vmap and differentiate through it (LGM backpropagates to the
    images). ``embed`` is the convenience that normalises [0, 1] images first.
    """

    name: str
    features: FeatureFn
    variables: Any
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int

    def normalize(self, images01: jax.Array) -> jax.Array:
        return (images01 - jnp.asarray(self.mean, images01.dtype)) / jnp.asarray(self.std, images01.dtype)

    def embed(self, images01: jax.Array) -> jax.Array:
        """Features of images in [0, 1] at the backbone's resolution."""
        return self.features(self.variables, self.normalize(images01))


Loader = Callable[[str], Backbone]
_FAMILIES: dict[str, Loader] = {}
_NAMES: dict[str, Loader] = {}


def register_family(family: str, loader: Loader, names: tuple[str, ...] = ()) -> None:
    """Make ``family:<argument>`` (and each of ``names``, with argument '') load via ``loader``.

    ``loader(spec)`` receives the full string the user gave (e.g. ``ddjax:runs/c10/teacher`` or
    ``dinov2_vitb14:/path/weights``).
    """
    _FAMILIES[family] = loader
    for name in names:
        _NAMES[name] = loader


def backbone_names() -> tuple[str, ...]:
    return tuple(sorted(_NAMES)) + tuple(f"{family}:<path>" for family in sorted(_FAMILIES))


def load_backbone(spec: str) -> Backbone:
    """Load a backbone from ``name``, ``name:<weights path>`` or ``family:<argument>``."""
    head = spec.split(":", 1)[0]
    loader = _NAMES.get(head) or _FAMILIES.get(head)
    if loader is None:
        raise DdjaxError(f"unknown backbone {spec!r}; known: {', '.join(backbone_names())}")
    return loader(spec)


def _load_ddjax_encoder(spec: str) -> Backbone:
    """``ddjax:<teacher dir>``: a ``ddjax teacher`` artifact (eval mode, its dataset's constants)."""
    from ddjax.data import get_spec
    from ddjax.artifacts.teacher import load_teacher

    _, _, directory = spec.partition(":")
    if not directory:
        raise DdjaxError("backbone 'ddjax' needs a teacher directory: ddjax:<workdir>/teacher")
    model, variables, meta = load_teacher(directory)
    data = get_spec(meta["dataset"])

    def features(variables, x):
        return model.apply(variables, x, train=False).reshape(x.shape[0], -1)

    return Backbone(name=spec, features=features, variables=variables,
                    resolution=int(meta["image_size"][0]), mean=tuple(data.mean), std=tuple(data.std),
                    feature_dim=int(meta["feature_dim"]))


register_family("ddjax", _load_ddjax_encoder)
