"""conv2d: im2col, winograd and lax agree with a numpy convolution, in values and second-order gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models.conv import Conv, conv2d, resolve_conv_impl

from . import reference_numpy as ref

# (kernel, stride, padding, Cin, Cout, side)
CASES = [
    (3, 1, 1, 3, 4, 8),  # ConvNet block
    (3, 1, 2, 3, 5, 8),  # KRR-ST teacher stem: padding 2 grows the map
    (1, 2, 0, 4, 6, 8),  # ResNet downsample shortcut
    (3, 2, 1, 2, 3, 9),  # strided 3x3 on an odd side
    (5, 1, 2, 2, 3, 7),
    (2, 2, 0, 3, 2, 8),
    (3, 1, 1, 2, 3, 7),  # Winograd on an odd side: a cropped extra tile row and column
]


def _inputs(k, cin, cout, side, dtype):
    rng = np.random.default_rng(k * 100 + cin * 10 + cout)
    x = rng.normal(size=(2, side, side, cin)).astype(dtype)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(dtype)
    return x, kernel


@pytest.mark.parametrize("k,stride,padding,cin,cout,side", CASES)
@pytest.mark.parametrize("impl", ["im2col", "winograd", "lax"])
def test_conv2d_matches_numpy(impl, k, stride, padding, cin, cout, side):
    x, kernel = _inputs(k, cin, cout, side, np.float64)
    with jax.enable_x64(True):
        got = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(kernel), stride, padding, impl))
    want = ref.conv(x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1), stride=stride,
                    padding=padding).transpose(0, 2, 3, 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,stride,padding,cin,cout,side", CASES)
@pytest.mark.parametrize("impl", ["im2col", "winograd"])
def test_second_order_gradients_agree(impl, k, stride, padding, cin, cout, side):
    """d/d(x, kernel) of ||d/d kernel f||^2, as in an unrolled inner SGD step."""
    x, kernel = _inputs(k, cin, cout, side, np.float64)

    def outer(impl):
        def inner_loss(x, kernel):
            return jnp.sum(jnp.tanh(conv2d(x, kernel, stride, padding, impl)) ** 2)

        def meta_loss(x, kernel):
            return jnp.sum(jax.grad(inner_loss, argnums=1)(x, kernel) ** 2)

        return jax.jit(jax.grad(meta_loss, argnums=(0, 1)))

    with jax.enable_x64(True):
        x, kernel = jnp.asarray(x), jnp.asarray(kernel)
        gx_i, gk_i = outer(impl)(x, kernel)
        gx_l, gk_l = outer("lax")(x, kernel)
        assert gx_i.dtype == jnp.float64
        assert float(jnp.abs(gx_l).max()) > 0
        np.testing.assert_allclose(gx_i, gx_l, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gk_i, gk_l, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["im2col", "winograd", "lax"])
def test_conv_module_is_interchangeable_with_flax_conv(impl):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    ours = Conv(5, 3, strides=2, padding=1, impl=impl)
    theirs = nn.Conv(5, (3, 3), strides=2, padding=((1, 1), (1, 1)))
    variables = ours.init(jax.random.key(1), x)
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    assert shapes == jax.tree_util.tree_map(jnp.shape, theirs.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_conv_without_bias_has_only_a_kernel():
    variables = Conv(4, 1, use_bias=False).init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    assert list(variables["params"]) == ["kernel"]
    assert variables["params"]["kernel"].shape == (1, 1, 2, 4)


def _uses_winograd(impl, shape, k=3, stride=1, padding=1):
    """Whether the convolution's jaxpr holds Winograd's batched 16-way matmul: equal values do
    not show which algorithm ran."""
    jaxpr = jax.make_jaxpr(lambda x, w: conv2d(x, w, stride, padding, impl))(
        jnp.zeros(shape), jnp.zeros((k, k, shape[-1], 4)))
    return any(e.primitive.name == "dot_general" and e.params["dimension_numbers"][1][0]
               for e in jaxpr.eqns)


def test_winograd_runs_where_it_fits_and_auto_where_it_also_pays():
    big = (4, 32, 32, 64)  # 2**18 input elements, 64 channels
    assert _uses_winograd("winograd", (1, 8, 8, 3))
    assert not _uses_winograd("im2col", big)
    for k, stride, padding in [(3, 2, 1), (3, 1, 2), (5, 1, 2)]:
        assert not _uses_winograd("winograd", big, k, stride, padding)
    if jax.default_backend() == "cpu":
        assert _uses_winograd("auto", big)
        assert not _uses_winograd("auto", (4, 32, 32, 15))  # few channels: im2col
        assert not _uses_winograd("auto", (3, 32, 32, 64))  # small input: im2col


def test_resolve_conv_impl():
    assert resolve_conv_impl("auto") == ("auto" if jax.default_backend() == "cpu" else "lax")
    assert resolve_conv_impl("lax") == "lax"
    with pytest.raises(DdjaxError, match="unknown conv implementation 'fft'"):
        resolve_conv_impl("fft")


def test_kernel_larger_than_input_is_an_error():
    with pytest.raises(DdjaxError, match="does not fit"):
        conv2d(jnp.zeros((1, 2, 2, 1)), jnp.zeros((5, 5, 1, 1)), impl="im2col")
