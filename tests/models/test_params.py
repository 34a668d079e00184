"""The PyTorch state-dict interchange, checked against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models import TorchLayout, build_model, from_torch_state_dict, to_torch_state_dict
from ddjax.models.convnet import ConvNet

from . import reference_numpy as ref

# MKDT fact sheet, ConvNet parameters() order.
CONVNET_D3_TORCH_ORDER = [
    "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
    "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias",
    "features.8.weight", "features.8.bias", "features.9.weight", "features.9.bias",
    "classifier.weight", "classifier.bias",
]


def _random_variables(model, image_size, seed=0):
    """A layout, a random PyTorch state dict for it, and the variables imported from it."""
    layout = TorchLayout.from_model(model, image_size)
    sd = ref.random_state_dict([(e.torch_name, e.torch_shape) for e in layout.entries], seed)
    return layout, sd, from_torch_state_dict(sd, layout)


def _nchw(x):
    return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# ----------------------------------------------------------------------------- PyTorch layout


@pytest.mark.parametrize("name,kwargs", [
    ("convnet", {"width": 8}),
    ("convnet_bn", {"width": 8}),
    ("convnet_nonorm", {"width": 8}),
    ("resnet10", {}),
])
def test_state_dict_round_trip(name, kwargs):
    model = build_model(name, num_outputs=5, **kwargs)
    layout, sd, variables = _random_variables(model, (32, 32))
    # The imported variables have the structure (and creation order) of a fresh init.
    fresh = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(fresh)
    exported = to_torch_state_dict(variables, layout)
    assert list(exported) == list(sd)
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].dtype == np.int64 and exported[key].shape == ()
        else:
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    _assert_trees_equal(from_torch_state_dict(exported, layout), variables)


def test_conv_and_dense_layouts_element_by_element():
    model = ConvNet(width=4, depth=1, num_outputs=3)  # 8x8 input -> 4x4x4 map -> 64 features
    layout, _, variables = _random_variables(model, (8, 8))
    sd = to_torch_state_dict(variables, layout)
    kernel = np.asarray(variables["params"]["features_0"]["kernel"])  # HWIO
    weight = sd["features.0.weight"]  # OIHW
    assert weight.shape == (4, 3, 3, 3)
    for o, i, h, w in [(0, 0, 0, 0), (3, 2, 1, 0), (1, 0, 2, 1)]:
        assert weight[o, i, h, w] == kernel[h, w, i, o]
    dense = np.asarray(variables["params"]["classifier"]["kernel"])  # rows in (h, w, c) order
    head = sd["classifier.weight"]  # (out, c*16 + h*4 + w)
    for o, c, h, w in [(0, 0, 0, 1), (2, 3, 1, 2), (1, 2, 3, 0)]:
        assert head[o, c * 16 + h * 4 + w] == dense[(h * 4 + w) * 4 + c, o]


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "none"])
def test_convnet_matches_numpy_pytorch_forward(norm):
    model = ConvNet(width=8, depth=3, norm=norm, num_outputs=6)
    layout, sd, variables = _random_variables(model, (32, 32))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    want = ref.convnet(sd, _nchw(x), depth=3, kind=norm)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, x), want, rtol=1e-4, atol=1e-4)


def test_head_reads_nchw_flattened_trunk():
    """By hand: the PyTorch head applied to the NCHW flattening of the trunk map."""
    model = build_model("resnet10", num_outputs=4)  # avg4 pooling: 64x64 -> 2x2x512 map
    layout, sd, variables = _random_variables(model, (64, 64))
    assert [e.chw for e in layout.entries if e.torch_name == "fc.weight"] == [(512, 2, 2)]
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    trunk = jax.jit(lambda v, x: model.apply(v, x, method="trunk"))(variables, x)
    features = _nchw(trunk).reshape(2, -1)
    want = features @ sd["fc.weight"].T + sd["fc.bias"]
    np.testing.assert_allclose(jax.jit(model.apply)(variables, x), want, rtol=1e-4, atol=1e-4)


def test_teacher_matches_numpy_pytorch_forward():
    """Stem padding 2, BasicBlocks with downsampling, eval-mode batch norm, global pooling."""
    model = build_model("resnet18_teacher")
    layout, sd, variables = _random_variables(model, (16, 16))
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
    want = ref.resnet(sd, _nchw(x), (2, 2, 2, 2), stem_padding=2, pooling="global")
    assert want.shape == (2, 512)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, x), want, rtol=1e-4, atol=1e-3)


def test_layout_follows_pytorch_parameters_order():
    model = build_model("convnet", width=8, num_outputs=5)
    layout = TorchLayout.from_model(model, (32, 32))
    params_order = [e.torch_name for e in layout.entries if e.collection == "params"]
    assert params_order == CONVNET_D3_TORCH_ORDER


def test_num_batches_tracked_may_be_absent_on_import():
    model = build_model("convnet_bn", width=8)
    layout, sd, variables = _random_variables(model, (32, 32))
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _assert_trees_equal(from_torch_state_dict(sd, layout), variables)


def test_import_errors_name_every_bad_key():
    model = build_model("convnet", width=8)
    layout, sd, _ = _random_variables(model, (32, 32))
    bad = dict(sd)
    del bad["features.4.bias"]
    bad["features.2.weight"] = np.zeros(8, np.float32)
    bad["classifier.weight"] = np.zeros((5, 128), np.float32)
    with pytest.raises(DdjaxError) as info:
        from_torch_state_dict(bad, layout)
    message = str(info.value)
    assert "\n" not in message
    assert "missing: features.4.bias" in message
    assert "unexpected: features.2.weight" in message
    assert "wrong shape: classifier.weight (5, 128) (expected (512, 128))" in message


def test_export_of_incomplete_variables_is_an_error():
    model = build_model("convnet", width=8)
    layout, _, variables = _random_variables(model, (32, 32))
    del variables["params"]["features_5"]
    with pytest.raises(DdjaxError, match="no params/features_5/scale"):
        to_torch_state_dict(variables, layout)
