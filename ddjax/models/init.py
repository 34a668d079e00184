"""Weight initialisation schemes for convolution and linear layers.

The expert trajectories and the inner learning rate of MKDT depend on how a fresh student is
initialised, so the default reproduces PyTorch ('torch'). The schemes:

- 'torch': PyTorch's default for ``nn.Conv2d`` / ``nn.Linear``. The weight is kaiming-uniform with
  a = sqrt(5), which works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias is drawn from the
  same interval.
- 'torchvision': what torchvision's ResNet does on top of that. Convolution weights are
  kaiming-normal (fan_out, ReLU gain), i.e. N(0, 2/fan_out) without truncation; linear layers and
  biases keep the 'torch' default.
- 'flax': Flax's own defaults (LeCun-normal weights, zero biases).

Here fan_in is in_channels * kh * kw for a convolution and in_features for a linear layer.
Normalisation layers are not covered: every scheme starts them at scale 1 and bias 0.
"""

import math

import jax
import jax.numpy as jnp
from jax.nn import initializers

from ddjax.errors import DdjaxError

INIT_SCHEMES = ("torch", "torchvision", "flax")
LAYER_KINDS = ("conv", "linear")


def check_init_scheme(scheme: str) -> str:
    """Return `scheme` unchanged if it is known; otherwise raise DdjaxError."""
    if scheme not in INIT_SCHEMES:
        raise DdjaxError(
            f"unknown init scheme {scheme!r}; expected one of {', '.join(INIT_SCHEMES)}"
        )
    return scheme


def symmetric_uniform(bound: float) -> initializers.Initializer:
    """An initialiser that draws from U(-bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
    """N(0, 2 / fan_out) for a (..., Cin, Cout) kernel, fan_out = Cout * receptive field size."""
    fan_out = math.prod(shape[:-2]) * shape[-1]
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def layer_initializers(scheme: str, layer: str, fan_in: int):
    """Return ``(kernel_init, bias_init)`` for a `layer` ('conv' or 'linear') with fan-in `fan_in`.

    The bias initialiser of the 'torch' scheme depends on the fan-in, which the bias shape alone
    does not tell, so layers build their initialisers at call time, once the input size is known.
    """
    check_init_scheme(scheme)
    if layer not in LAYER_KINDS:
        raise DdjaxError(f"unknown layer kind {layer!r}; expected one of {', '.join(LAYER_KINDS)}")
    if scheme == "flax":
        return initializers.lecun_normal(), initializers.zeros
    torch_default = symmetric_uniform(1.0 / math.sqrt(fan_in))
    if scheme == "torchvision" and layer == "conv":
        return kaiming_normal_fan_out, torch_default
    return torch_default, torch_default
