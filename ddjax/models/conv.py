"""2-D convolution on NHWC inputs with HWIO kernels, in three interchangeable implementations.

'lax' is ``lax.conv_general_dilated``; 'im2col' gathers the shifted slices and does one matmul;
'winograd' computes 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) (other shapes fall back to
im2col). All compute the same function, but XLA:CPU's second-order gradients of ``lax.conv`` (MTT's
unrolled inner loops) are very slow, while the other two differentiate into fast matmuls. 'auto'
picks lax off CPU and, on CPU, winograd where it measured faster (``WINOGRAD_MIN_CHANNELS``,
``WINOGRAD_MIN_INPUT``), else im2col. Figures: experiments/README.md.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ddjax.errors import DdjaxError
from ddjax.models.init import layer_initializers

CONV_IMPLS = ("auto", "im2col", "winograd", "lax")
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_INPUT = 2**18

# F(2x2, 3x3): a 4x4 input tile d and a 3x3 kernel g give the 2x2 output tile
# A^T [(G g G^T) * (B^T d B)] A  (cross-correlation, as in CNNs).
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def resolve_conv_impl(impl: str) -> str:
    """Check the name; off CPU map 'auto' to 'lax'. On CPU 'auto' remains: conv2d then chooses
    between winograd and im2col for each convolution from its shapes."""
    if impl not in CONV_IMPLS:
        raise DdjaxError(
            f"unknown conv implementation {impl!r}; expected one of {', '.join(CONV_IMPLS)}"
        )
    if impl == "auto":
        return "auto" if jax.default_backend() == "cpu" else "lax"
    return impl


def conv2d(x, kernel, stride: int = 1, padding: int = 0, impl: str = "auto"):
    """Convolve `x` (N,H,W,Cin) with `kernel` (kh,kw,Cin,Cout), zero `padding` on each side.

    Like PyTorch's Conv2d (cross-correlation, no kernel flip), the output side is
    (side + 2*padding - k) // stride + 1.
    """
    impl = resolve_conv_impl(impl)
    if impl == "lax":
        dtype = jnp.result_type(x, kernel)  # lax.conv needs equal dtypes; the matmul promotes
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        pads = ((padding, padding), (padding, padding))
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    kh, kw, cin, cout = kernel.shape
    if (kh, kw, stride, padding) == (3, 3, 1, 1) and (
        impl == "winograd"
        or (impl == "auto" and cin >= WINOGRAD_MIN_CHANNELS and math.prod(x.shape) >= WINOGRAD_MIN_INPUT)
    ):
        return _winograd_3x3(x, kernel)
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


def _combine(matrix, parts):
    """The rows of ``matrix @ parts`` for a small constant matrix, as adds and subtracts of the
    arrays in ``parts`` (zero coefficients skipped): a Winograd tile transform."""
    rows = []
    for coefficients in matrix:
        terms = [c * p if abs(c) != 1 else (p if c == 1 else -p) for c, p in zip(coefficients, parts) if c]
        rows.append(sum(terms[1:], terms[0]))
    return rows


def _winograd_3x3(x, kernel):
    """3x3 convolution, stride 1, zero padding 1, by F(2x2, 3x3) on 2x2 output tiles.

    An odd side gets one more zero row/column, whose outputs are cropped. The input tiles'
    transform B^T d B is applied to strided slices (rows, then columns), giving 16 arrays of
    (N * tiles, Cin); each meets its entry of the transformed kernel G g G^T in one batched matmul,
    and A^T m A turns the 16 products back into the four outputs of each tile.
    """
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    th, tw = -(-h // 2), -(-w // 2)
    x = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    row_tiles = _combine(_WINOGRAD_BT, [x[:, i : i + 2 * th : 2] for i in range(4)])
    tiles = [t for r in row_tiles for t in _combine(_WINOGRAD_BT, [r[:, :, j : j + 2 * tw : 2] for j in range(4)])]
    v = jnp.stack(tiles).reshape(16, n * th * tw, cin)
    g = jnp.asarray(_WINOGRAD_G, kernel.dtype)
    u = jnp.einsum("ka,abio,lb->klio", g, kernel, g).reshape(16, cin, cout)
    m = jnp.matmul(v, u).reshape(4, 4, n, th, tw, cout)
    out = [_combine(_WINOGRAD_AT, list(r)) for r in _combine(_WINOGRAD_AT, list(m))]  # out[p][q]
    y = jnp.stack([jnp.stack(row, axis=3) for row in out], axis=2)  # (N, th, 2, tw, 2, Cout)
    return y.reshape(n, 2 * th, 2 * tw, cout)[:, :h, :w]


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
