"""Helpers of the LGM tests: tiny frozen ConvNet backbones (width 8), also loadable by name.

``lgmtest:<seed>[:<resolution>[:<declared feature_dim>]]`` is registered as a backbone family, so
the stages can load a tiny backbone like any other; the third field makes a backbone that lies
about its feature size (for the error test).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax

from ddjax.backbones.registry import Backbone, register_family
from ddjax.models import build_model, init_params

REPO = Path(__file__).resolve().parents[2]
LGM_SMOKE = str(REPO / "experiments" / "smoke.py") + ":lgm"


def tiny_backbone(resolution: int = 16, width: int = 8, seed: int = 0, name: str = "tiny",
                  declared_dim: int | None = None) -> Backbone:
    """A randomly initialised headless ConvNet (instance norm) wrapped as a Backbone."""
    model = build_model("convnet", num_outputs=0, width=width, image_size=resolution)
    variables = init_params(model, jax.random.key(seed), resolution)
    side = resolution // 8

    def features(variables, x):
        return model.apply(variables, x, train=False).reshape(x.shape[0], -1)

    return Backbone(name=name, features=features, variables=variables, resolution=resolution,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    feature_dim=declared_dim or side * side * width)


def smooth_backbone(resolution: int = 16, dim: int = 12, seed: int = 0) -> Backbone:
    """A cheap smooth feature map, tanh(flatten(x) @ V), for tests about the objective rather than
    the network (it compiles in a fraction of the ConvNet's time)."""
    V = jax.random.normal(jax.random.key(seed), (resolution * resolution * 3, dim)) / resolution

    def features(variables, x):
        return jax.numpy.tanh(x.reshape(x.shape[0], -1) @ variables)

    return Backbone(name="smooth", features=features, variables=V, resolution=resolution,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), feature_dim=dim)


@functools.lru_cache(maxsize=16)
def _load_test_backbone(spec: str) -> Backbone:
    """Cached, so the stages of one test session share compilations for equal specs."""
    fields = spec.split(":")[1:]
    seed = int(fields[0]) if fields and fields[0] else 0
    resolution = int(fields[1]) if len(fields) > 1 else 16
    declared = int(fields[2]) if len(fields) > 2 else None
    return tiny_backbone(resolution=resolution, seed=seed, name=spec, declared_dim=declared)


register_family("lgmtest", _load_test_backbone)
