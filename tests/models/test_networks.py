"""ConvNet and ResNet: parameter counts from the references, norms, pooling, heads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models.convnet import ConvNet
from ddjax.models.layers import make_norm
from ddjax.models.params import TorchLayout, from_torch_state_dict
from ddjax.models.resnet import ResNet

from . import reference_numpy as ref


def _init_structure(model, side):
    """Variables of a fresh init as nested dicts of shapes, in creation order, computing nothing
    (``jax.eval_shape`` itself returns sorted dicts, so the order is read while tracing)."""
    captured = {}

    def shapes(tree):  # tree_map would sort the keys
        return {k: shapes(v) for k, v in tree.items()} if isinstance(tree, dict) else tree.shape

    def init(key):
        variables = model.init(key, jnp.zeros((1, side, side, 3)))
        captured.update(shapes(variables))
        return variables

    jax.eval_shape(init, jax.random.key(0))
    return captured


def _count_params(model, side):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, 3)))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


def test_parameter_counts_match_the_references():
    # MKDT fact sheet: ConvNet (CIFAR, 32x32) and ConvNetD4 (Tiny ImageNet, 64x64) with 512 outputs.
    assert _count_params(ConvNet(depth=3, num_outputs=512), 32) == 1_348_608
    assert _count_params(ConvNet(depth=4, num_outputs=512), 64) == 1_496_448
    # torchvision resnet18 has 11,689,512 parameters; the teacher drops fc (512*1000 + 1000) and
    # replaces the 7x7 stem by a 3x3 one.
    teacher = ResNet((2, 2, 2, 2), num_outputs=0, stem_padding=2)
    torchvision_resnet18 = 11_689_512
    fc, stem_difference = 512 * 1000 + 1000, 7 * 7 * 3 * 64 - 3 * 3 * 3 * 64
    assert _count_params(teacher, 32) == torchvision_resnet18 - fc - stem_difference


def test_instance_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 5, 6, 4)) * 3 + 5).astype(np.float32)  # non-zero mean per channel
    layer = make_norm("instancenorm")
    variables = layer.init(jax.random.key(0), x)
    variables = {"params": {"scale": rng.uniform(0.5, 2, 4).astype(np.float32),
                            "bias": rng.normal(size=4).astype(np.float32)}}
    got = np.asarray(layer.apply(variables, x))
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)  # biased, per sample and channel
    scale, bias = variables["params"]["scale"], variables["params"]["bias"]
    want = (x - mean) / np.sqrt(var + 1e-5) * scale + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_norm_uses_torch_momentum_and_batch_statistics_in_train_mode():
    model = ConvNet(width=4, depth=1, norm="batchnorm", num_outputs=0)
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 3)) + 2.0
    variables = jax.jit(model.init)(jax.random.key(0), x)
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    conv = ref.conv(np.asarray(x).transpose(0, 3, 1, 2),
                    np.asarray(variables["params"]["features_0"]["kernel"]).transpose(3, 2, 0, 1),
                    np.asarray(variables["params"]["features_0"]["bias"]), padding=1)
    batch_mean, batch_var = conv.mean(axis=(0, 2, 3)), conv.var(axis=(0, 2, 3))
    stats = updates["batch_stats"]["features_1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * batch_var, rtol=1e-4)
    normalised = (conv - batch_mean[:, None, None]) / np.sqrt(batch_var[:, None, None] + 1e-5)
    want = ref.avg_pool(ref.relu(normalised), 2).transpose(0, 2, 3, 1).reshape(3, -1)
    np.testing.assert_allclose(train_out, want, rtol=1e-4, atol=1e-5)
    # Eval mode reads the running statistics instead (still the initial ones here).
    eval_out = model.apply(variables, x)
    assert not np.allclose(eval_out, train_out, atol=1e-3)


def test_convnet_shapes_and_headless_output():
    x = jnp.zeros((2, 32, 32, 3))
    model = ConvNet(width=8, depth=3, num_outputs=7)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def shape(model, method="__call__"):
        return jax.eval_shape(lambda v: model.apply(v, x, method=method), variables).shape

    assert shape(model, "trunk") == (2, 4, 4, 8)
    assert shape(model, "features") == (2, 128)
    assert shape(model) == (2, 7)
    headless = ConvNet(width=8, depth=3, num_outputs=0)
    assert list(_init_structure(headless, 32)["params"])[-1] == "features_9"
    assert shape(headless) == (2, 128)


@pytest.mark.parametrize("norm,names", [
    ("instancenorm", ["features_0", "features_1", "features_4", "features_5", "features_8",
                      "features_9", "classifier"]),
    ("none", ["features_0", "features_3", "features_6", "classifier"]),
])
def test_convnet_names_follow_torch_sequential_indices(norm, names):
    params = _init_structure(ConvNet(width=4, depth=3, norm=norm, num_outputs=2), 8)["params"]
    assert list(params) == names
    assert list(params["features_0"]) == ["kernel", "bias"]


def test_resnet_avg4_equals_global_pooling_on_32x32_only():
    global_net = ResNet((1, 1, 1, 1), num_outputs=0, pooling="global")
    avg4_net = ResNet((1, 1, 1, 1), num_outputs=0, pooling="avg4")
    layout = TorchLayout.from_model(global_net)
    sd = ref.random_state_dict([(e.torch_name, e.torch_shape) for e in layout.entries])
    variables = from_torch_state_dict(sd, layout)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    @jax.jit
    def both_trunks(v, x):
        return global_net.apply(v, x, method="trunk"), avg4_net.apply(v, x, method="trunk")

    pooled_globally, pooled_by_4 = both_trunks(variables, x)
    assert pooled_by_4.shape == (2, 1, 1, 512)  # 32x32 input: layer4 is 4x4, pooled by 4
    np.testing.assert_allclose(pooled_globally, pooled_by_4, rtol=1e-5, atol=1e-6)
    big = jnp.zeros((1, 64, 64, 3))
    assert jax.eval_shape(avg4_net.apply, variables, big).shape == (1, 512 * 2 * 2)
    assert jax.eval_shape(global_net.apply, variables, big).shape == (1, 512)


def test_resnet_block_names_follow_torchvision():
    params = _init_structure(ResNet((1, 1, 1, 1), num_outputs=3), 8)["params"]
    assert list(params) == ["conv1", "bn1", "layer1_0", "layer2_0", "layer3_0", "layer4_0", "fc"]
    assert list(params["layer1_0"]) == ["conv1", "bn1", "conv2", "bn2"]
    assert list(params["layer2_0"]) == [
        "conv1", "bn1", "conv2", "bn2", "downsample_0", "downsample_1"]
    assert params["layer2_0"]["downsample_0"]["kernel"] == (1, 1, 64, 128)
    assert "bias" not in params["conv1"]


@pytest.mark.parametrize("kwargs,match", [
    ({"norm": "layernorm"}, "unknown norm 'layernorm'"),
    ({"pooling": "max"}, "unknown pooling 'max'"),
    ({"stage_sizes": (2, 2, 2)}, "needs 4 stage sizes"),
])
def test_resnet_rejects_bad_settings(kwargs, match):
    with pytest.raises(DdjaxError, match=match):
        ResNet(**kwargs).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
