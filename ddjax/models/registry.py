"""Networks by name, as the configs and the CLI refer to them, and their initialisation.

Names are matched case-insensitively and ignoring '_' and '-', so the reference code's names
('ConvNet', 'ConvNetD4', 'ResNet10', 'ResNet18', 'ConvNetBN', ...) work as they are.
"""

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ddjax.errors import DdjaxError
from ddjax.models.conv import resolve_conv_impl
from ddjax.models.convnet import ConvNet
from ddjax.models.init import check_init_scheme
from ddjax.models.layers import Encoder
from ddjax.models.resnet import ResNet

# Student dimension = the teachers' representation size, which MKDT's students regress onto.
REPRESENTATION_DIM = 512


class _Spec(NamedTuple):
    cls: type
    fields: dict
    num_outputs: int
    init_scheme: str


_SPECS = {
    # MKDT students; the plain names pick depth 3 up to 32x32 inputs and 4 above (ConvNetD4).
    # MTT's ConvNetD1..D4 fix the depth; the shallow ones suit quick prototypes and tests.
    "convnet": _Spec(ConvNet, {}, REPRESENTATION_DIM, "torch"),
    "convnet_d1": _Spec(ConvNet, {"depth": 1}, REPRESENTATION_DIM, "torch"),
    "convnet_d2": _Spec(ConvNet, {"depth": 2}, REPRESENTATION_DIM, "torch"),
    "convnet_d3": _Spec(ConvNet, {"depth": 3}, REPRESENTATION_DIM, "torch"),
    "convnet_d4": _Spec(ConvNet, {"depth": 4}, REPRESENTATION_DIM, "torch"),
    "convnet_bn": _Spec(ConvNet, {"norm": "batchnorm"}, REPRESENTATION_DIM, "torch"),
    "convnet_nonorm": _Spec(ConvNet, {"norm": "none"}, REPRESENTATION_DIM, "torch"),
    # SSL teachers: torchvision resnet18 without max-pool and fc (KRR-ST Barlow Twins: stem
    # padding 2; SAS SimCLR: stem padding 1), 512-d globally pooled features.
    "resnet18_teacher": _Spec(ResNet, {"stage_sizes": (2, 2, 2, 2), "stem_padding": 2,
                                       "pooling": "global"}, 0, "torchvision"),
    "resnet18_simclr": _Spec(ResNet, {"stage_sizes": (2, 2, 2, 2), "stem_padding": 1,
                                      "pooling": "global"}, 0, "torchvision"),
    # MKDT's evaluation ResNets (MTT's networks.py): PyTorch default init, avg_pool2d(4).
    "resnet10": _Spec(ResNet, {"stage_sizes": (1, 1, 1, 1), "pooling": "avg4"},
                      REPRESENTATION_DIM, "torch"),
    "resnet18": _Spec(ResNet, {"stage_sizes": (2, 2, 2, 2), "pooling": "avg4"},
                      REPRESENTATION_DIM, "torch"),
}

MODEL_NAMES = tuple(_SPECS)


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


_BY_SQUASHED = {_squash(name): name for name in _SPECS}


def canonical_model_name(name: str) -> str:
    """The registry name that `name` refers to; DdjaxError listing the known names if none."""
    try:
        return _BY_SQUASHED[_squash(name)]
    except KeyError:
        known = ", ".join(MODEL_NAMES)
        raise DdjaxError(f"unknown model {name!r}; known models: {known}") from None


def _hw(image_size) -> tuple[int, int]:
    """(H, W) from an int side or an (H, W) pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def build_model(name: str, *, num_outputs: int | None = None, image_size=(32, 32),
                conv_impl: str = "auto", init: str | None = None, **overrides) -> Encoder:
    """Build the network called `name`.

    `num_outputs` is the size of the linear head (0: none); None takes the name's default (512,
    the teacher representation size, for the students; 0 for the teachers). `init` is an init
    scheme of ddjax.models.init; None takes the name's default. `image_size` (int or (H, W)) picks
    the depth of 'convnet' / 'convnet_bn' / 'convnet_nonorm'. `overrides` set other fields of the
    network class (e.g. ``width=32``).
    """
    spec = _SPECS[canonical_model_name(name)]
    fields = dict(spec.fields)
    if spec.cls is ConvNet and "depth" not in fields:
        fields["depth"] = 3 if max(_hw(image_size)) <= 32 else 4
    own_args = {"num_outputs", "init_scheme", "conv_impl"}
    known = {f.name for f in dataclasses.fields(spec.cls)} - {"parent", "name"} - own_args
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DdjaxError(f"{spec.cls.__name__} has no field(s) {', '.join(unknown)}; "
                         f"fields: {', '.join(sorted(known))}")
    fields.update(overrides)
    fields["num_outputs"] = spec.num_outputs if num_outputs is None else num_outputs
    fields["init_scheme"] = check_init_scheme(spec.init_scheme if init is None else init)
    resolve_conv_impl(conv_impl)  # rejects unknown names now; 'auto' stays for portability
    fields["conv_impl"] = conv_impl
    return spec.cls(**fields)


def dummy_input(image_size=(32, 32), channels: int = 3):
    """A zero NHWC batch of one image, for initialisation and shape inference."""
    return jnp.zeros((1, *_hw(image_size), channels), jnp.float32)


@partial(jax.jit, static_argnums=(0, 2, 3))
def _jitted_init(model, key, hw, channels):
    return model.init(key, dummy_input(hw, channels), train=False)


def init_params(model: Encoder, key, image_size=(32, 32), channels: int = 3) -> dict:
    """Fresh variables of `model` for images of `image_size`: {'params': ..., 'batch_stats'?: ...}.

    Compiled once per (model, image size, channels).
    """
    return _jitted_init(model, key, _hw(image_size), channels)


def has_batch_stats(model: Encoder, image_size=(32, 32), channels: int = 3) -> bool:
    """Whether `model` keeps running statistics (a 'batch_stats' collection); computes nothing."""
    x = dummy_input(image_size, channels)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return "batch_stats" in shapes
