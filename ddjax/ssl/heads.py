"""Projector MLPs on the 512-d encoder output, used during SSL teacher training only.

Layers start as PyTorch's (``nn.Linear`` weights and biases ``U(+-1/sqrt(fan_in))``; BatchNorm
momentum 0.1, eps 1e-5) so runs start like the reference code. :class:`BarlowTwinsProjector`:
``[Linear -> BN -> ReLU] * len(hidden_dims) -> Linear`` (solo-learn's CIFAR 2048-2048-2048 by
default). :class:`SimCLRProjector`: SAS's ``Linear -> BN -> ReLU -> Linear -> BN(no affine)``,
512 -> 512 -> 128, or plain ``Linear -> ReLU -> Linear`` with ``batch_norm=False``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # Flax convention: running = 0.9 * running + 0.1 * batch (PyTorch momentum 0.1)
BN_EPS = 1e-5


def _torch_uniform_bias(fan_in: int):
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """``nn.Dense`` with PyTorch ``nn.Linear`` default initialisation."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        return nn.Dense(
            self.features,
            use_bias=self.use_bias,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=_torch_uniform_bias(fan_in),
            name="dense",
        )(x)


def _batch_norm(train: bool, affine: bool = True, name: Optional[str] = None):
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        use_bias=affine,
        use_scale=affine,
        name=name,
    )


class BarlowTwinsProjector(nn.Module):
    """Barlow Twins projector; ``__call__(x_BD, train)`` returns ``(B, output_dim)``."""

    hidden_dims: Sequence[int] = (2048, 2048)
    output_dim: int = 2048
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        for i, width in enumerate(self.hidden_dims):
            x = TorchDense(width, use_bias=self.use_bias, name=f"linear{i}")(x)
            x = _batch_norm(train, name=f"bn{i}")(x)
            x = nn.relu(x)
        last = f"linear{len(self.hidden_dims)}"
        return TorchDense(self.output_dim, use_bias=self.use_bias, name=last)(x)


class SimCLRProjector(nn.Module):
    """SimCLR projector; ``__call__(x_BD, train)`` returns ``(B, output_dim)``.

    ``hidden_dim=None`` uses the input width, as SAS's ``LinearCritic`` does.
    """

    hidden_dim: Optional[int] = None
    output_dim: int = 128
    batch_norm: bool = True
    use_bias: Optional[bool] = None  # None: biases only when there is no BatchNorm

    @nn.compact
    def __call__(self, x, train: bool):
        hidden = self.hidden_dim or x.shape[-1]
        use_bias = (not self.batch_norm) if self.use_bias is None else self.use_bias
        x = TorchDense(hidden, use_bias=use_bias, name="linear0")(x)
        if self.batch_norm:
            x = _batch_norm(train, name="bn0")(x)
        x = nn.relu(x)
        x = TorchDense(self.output_dim, use_bias=use_bias, name="linear1")(x)
        if self.batch_norm:
            x = _batch_norm(train, affine=False, name="bn1")(x)
        return x
