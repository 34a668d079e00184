"""Initialisation schemes: PyTorch's default, torchvision's ResNet init, Flax's default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models.conv import Conv
from ddjax.models.convnet import ConvNet
from ddjax.models.layers import Dense

# A 3x3 conv 64 -> 256 (fan_in 576, fan_out 2304) and a linear 1024 -> 512.
CONV_X = jnp.zeros((1, 4, 4, 64))
DENSE_X = jnp.zeros((1, 1024))


def _params(module, x, seed=0):
    params = jax.jit(module.init)(jax.random.key(seed), x)["params"]
    return jax.tree_util.tree_map(np.asarray, params)


def _check_uniform(values, bound, check_variance=True):
    values = values.ravel()
    assert values.min() >= -bound and values.max() <= bound
    # The extremes get close to the bound on both sides (not a narrower or one-sided law).
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound
    if check_variance:
        assert abs(values.mean()) < 0.01 * bound
        np.testing.assert_allclose(values.var(), bound**2 / 3, rtol=0.03)


@pytest.mark.parametrize("module,x,fan_in", [
    (Conv(256, 3, init_scheme="torch"), CONV_X, 576),
    (Dense(512, init_scheme="torch"), DENSE_X, 1024),
])
def test_torch_default_is_uniform_in_inverse_sqrt_fan_in(module, x, fan_in):
    params = _params(module, x)
    bound = 1 / np.sqrt(fan_in)
    _check_uniform(params["kernel"], bound)
    _check_uniform(params["bias"], bound, check_variance=False)


def test_torchvision_conv_is_kaiming_normal_fan_out():
    params = _params(Conv(256, 3, init_scheme="torchvision"), CONV_X)
    kernel = params["kernel"].ravel()
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 2304), rtol=0.02)
    # Untruncated: values beyond two standard deviations occur (~4.6% of them).
    assert np.mean(np.abs(kernel) > 2 * np.sqrt(2 / 2304)) > 0.03
    _check_uniform(params["bias"], 1 / np.sqrt(576), check_variance=False)


def test_torchvision_linear_keeps_torch_default():
    params = _params(Dense(512, init_scheme="torchvision"), DENSE_X)
    _check_uniform(params["kernel"], 1 / np.sqrt(1024))


def test_flax_scheme_is_lecun_normal_with_zero_bias():
    params = _params(Conv(256, 3, init_scheme="flax"), CONV_X)
    np.testing.assert_allclose(params["kernel"].std(), np.sqrt(1 / 576), rtol=0.03)
    assert not params["bias"].any()


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_norm_layers_start_at_scale_one_bias_zero(norm):
    model = ConvNet(width=8, depth=2, norm=norm, num_outputs=3)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    for name in ("features_1", "features_5"):
        np.testing.assert_array_equal(variables["params"][name]["scale"], np.ones(8))
        np.testing.assert_array_equal(variables["params"][name]["bias"], np.zeros(8))
    if norm == "batchnorm":
        np.testing.assert_array_equal(variables["batch_stats"]["features_1"]["mean"], np.zeros(8))
        np.testing.assert_array_equal(variables["batch_stats"]["features_1"]["var"], np.ones(8))


def test_params_are_float32_even_with_x64():
    with jax.enable_x64(True):
        x = jnp.zeros((1, 4, 4, 2), jnp.float64)
        params = jax.eval_shape(Conv(4, 3).init, jax.random.key(0), x)["params"]
    assert params["kernel"].dtype == np.float32 and params["bias"].dtype == np.float32


def test_unknown_scheme_is_an_error():
    with pytest.raises(DdjaxError, match="unknown init scheme 'xavier'"):
        Conv(4, 3, init_scheme="xavier").init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
