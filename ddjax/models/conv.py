"""2-D convolution on NHWC inputs with HWIO kernels, in two interchangeable implementations.

'lax' calls ``lax.conv_general_dilated``. 'im2col' gathers the kh*kw shifted (strided) slices of
the padded input, concatenates them on the channel axis and multiplies once by the kernel
reshaped to (kh*kw*Cin, Cout). Both compute the same function, but XLA:CPU runs the
second-order gradients of ``lax.conv`` (the unrolled inner loops of MTT) on a very slow generic
path, while the im2col form differentiates into slices, pads and matmuls, which are fast.
'auto' picks im2col on CPU and lax elsewhere (cuDNN handles the second-order convolutions).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ddjax.errors import DdjaxError
from ddjax.models.init import layer_initializers

CONV_IMPLS = ("auto", "im2col", "lax")


def resolve_conv_impl(impl: str) -> str:
    """Map 'auto' to the implementation suited to the default backend; check other names."""
    if impl not in CONV_IMPLS:
        raise DdjaxError(
            f"unknown conv implementation {impl!r}; expected one of {', '.join(CONV_IMPLS)}"
        )
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "lax"
    return impl


def conv2d(x, kernel, stride: int = 1, padding: int = 0, impl: str = "auto"):
    """Convolve `x` (N,H,W,Cin) with `kernel` (kh,kw,Cin,Cout), zero `padding` on each side.

    Like PyTorch's Conv2d (cross-correlation, no kernel flip), the output side is
    (side + 2*padding - k) // stride + 1.
    """
    if resolve_conv_impl(impl) == "lax":
        dtype = jnp.result_type(x, kernel)  # lax.conv needs equal dtypes; the matmul promotes
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        pads = ((padding, padding), (padding, padding))
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = x.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise DdjaxError(f"a {kh}x{kw} convolution does not fit a padded {h}x{w} input")
    taps = [
        lax.slice(
            x,
            (0, i, j, 0),
            (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, cin),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return patches @ kernel.reshape(kh * kw * cin, cout)


class Conv(nn.Module):
    """A square 2-D convolution layer whose parameters match ``flax.linen.Conv``.

    Parameters are 'kernel' (k, k, Cin, features) and, if `use_bias`, 'bias' (features,), so a
    parameter tree can be used with either module. Unlike ``nn.Conv`` the initialisers are given
    as a scheme name (see ddjax.models.init), because PyTorch's bias init needs the fan-in.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    use_bias: bool = True
    impl: str = "auto"
    init_scheme: str = "torch"

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = layer_initializers(self.init_scheme, "conv", fan_in=k * k * cin)
        kernel = self.param("kernel", kernel_init, (k, k, cin, self.features), jnp.float32)
        y = conv2d(x, kernel, self.strides, self.padding, self.impl)
        if self.use_bias:
            y = y + self.param("bias", bias_init, (self.features,), jnp.float32)
        return y
