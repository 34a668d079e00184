"""build_model names, aliases and defaults; init_params; has_batch_stats."""

import jax
import numpy as np
import pytest

from ddjax.errors import DdjaxError
from ddjax.models import MODEL_NAMES, build_model, has_batch_stats, init_params
from ddjax.models.convnet import ConvNet
from ddjax.models.resnet import ResNet


def test_convnet_depth_follows_image_size():
    assert build_model("convnet", image_size=(32, 32)).depth == 3
    assert build_model("convnet", image_size=64).depth == 4
    assert build_model("convnet_bn", image_size=(64, 64)).depth == 4
    assert build_model("convnet_d3", image_size=64).depth == 3
    assert build_model("convnet_d4").depth == 4
    assert [build_model(f"convnet_d{d}", image_size=64).depth for d in (1, 2)] == [1, 2]


@pytest.mark.parametrize("alias,name", [
    ("ConvNet", "convnet"), ("ConvNetD4", "convnet_d4"), ("ResNet10", "resnet10"),
    ("ResNet18", "resnet18"), ("CONVNET_BN", "convnet_bn"),
    ("resnet18-teacher", "resnet18_teacher"),
])
def test_aliases_are_case_insensitive(alias, name):
    assert build_model(alias) == build_model(name)


def test_defaults_of_each_family():
    student = build_model("convnet")
    assert (student.width, student.norm, student.num_outputs, student.init_scheme) == (
        128, "instancenorm", 512, "torch")
    assert build_model("convnet_bn").norm == "batchnorm"
    assert build_model("convnet_nonorm").norm == "none"
    teacher = build_model("resnet18_teacher")
    assert (teacher.stage_sizes, teacher.stem_padding, teacher.pooling, teacher.num_outputs,
            teacher.init_scheme) == ((2, 2, 2, 2), 2, "global", 0, "torchvision")
    assert build_model("resnet18_simclr").stem_padding == 1
    for name, stages in [("resnet10", (1, 1, 1, 1)), ("resnet18", (2, 2, 2, 2))]:
        net = build_model(name)
        settings = (net.stage_sizes, net.stem_padding, net.pooling, net.num_outputs)
        assert settings == (stages, 1, "avg4", 512) and net.init_scheme == "torch"
        assert isinstance(net, ResNet)


def test_explicit_arguments_and_overrides():
    model = build_model("convnet", num_outputs=10, init="flax", conv_impl="lax", width=16)
    assert model == ConvNet(width=16, depth=3, num_outputs=10, conv_impl="lax", init_scheme="flax")
    teacher = build_model("resnet18_teacher", num_outputs=0, norm="instancenorm")
    assert teacher.norm == "instancenorm"


@pytest.mark.parametrize("call,match", [
    (lambda: build_model("vgg11"), "unknown model 'vgg11'; known models: convnet, convnet_d1"),
    (lambda: build_model("convnet", widht=16), "ConvNet has no field.* widht"),
    (lambda: build_model("convnet", init_scheme="flax"), "no field.* init_scheme"),
    (lambda: build_model("convnet", init="xavier"), "unknown init scheme 'xavier'"),
    (lambda: build_model("convnet", conv_impl="fft"), "unknown conv implementation 'fft'"),
])
def test_bad_requests_raise_ddjax_error(call, match):
    with pytest.raises(DdjaxError, match=match):
        call()


def test_every_name_builds_and_reports_batch_stats():
    expected = {"convnet_bn", "resnet18_teacher", "resnet18_simclr", "resnet10", "resnet18"}
    assert {name for name in MODEL_NAMES if has_batch_stats(build_model(name))} == expected


def test_init_params_gives_the_variables_of_the_model():
    model = build_model("convnet_bn", width=8, num_outputs=3)
    variables = init_params(model, jax.random.key(0), image_size=(16, 16))
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["features_0"]["kernel"].shape == (3, 3, 3, 8)
    assert variables["params"]["classifier"]["kernel"].shape == (8 * 2 * 2, 3)
    again = init_params(model, jax.random.key(0), image_size=(16, 16))
    other = init_params(model, jax.random.key(1), image_size=(16, 16))
    np.testing.assert_array_equal(variables["params"]["features_0"]["kernel"],
                                  again["params"]["features_0"]["kernel"])
    assert not np.array_equal(variables["params"]["features_0"]["kernel"],
                              other["params"]["features_0"]["kernel"])
