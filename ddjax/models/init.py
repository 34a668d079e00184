"""Weight initialisation schemes for convolution and linear layers.

MKDT's expert trajectories and inner learning rate depend on a fresh student's initialisation, so
the default reproduces PyTorch. 'torch': ``nn.Conv2d``/``nn.Linear`` defaults, weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)); 'torchvision': as torchvision's ResNet, convolution weights
N(0, 2/fan_out) (kaiming-normal, fan_out, no truncation), the rest as 'torch'; 'flax': LeCun-normal
weights, zero biases. Normalisation layers always start at scale 1, bias 0.
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
