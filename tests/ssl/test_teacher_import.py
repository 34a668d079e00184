"""`ddjax teacher` with teacher.import_path: a PyTorch-layout state dict becomes the teacher artifact."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from ddjax.cli import main
from ddjax.data import load_arrays
from ddjax.models import TorchLayout, build_model, to_torch_state_dict
from ddjax.artifacts.teacher import load_teacher
from ddjax.ssl.torch_import import encoder_state_dict

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke.py")
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def random_variables(model, seed=0):
    """Random variables of `model` (no compilation): normal weights, positive running variances."""
    shapes = jax.eval_shape(lambda k: model.init(k, np.zeros((1, 32, 32, 3), np.float32)),
                            jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def resnet_state_dict():
    """A random ResNet-18 teacher and its state dict as KRR-ST-like names: 'module.' + fc + head."""
    model = build_model("resnet18_teacher", num_outputs=0, conv_impl="lax")
    variables = random_variables(model)
    state = to_torch_state_dict(variables, TorchLayout.from_model(model))
    wrapped = {"module." + name: value for name, value in state.items()}
    wrapped["module.fc.weight"] = np.zeros((10, 512), np.float32)
    wrapped["module.projector.0.weight"] = np.zeros((2048, 512), np.float32)
    return model, variables, wrapped


def import_cli(workdir, data_dir, path, *overrides):
    args = ["teacher", "--config", SMOKE, "--workdir", str(workdir), "--set", f"data.data_dir={data_dir}",
            "--set", "teacher.model=resnet18_teacher", "--set", "teacher.model_kwargs={}",
            "--set", f"teacher.import_path={path}", "--set", "teacher.knn_bank=100",
            "--set", "teacher.knn_test=100"]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def test_import_npz_reproduces_the_source_features(resnet_state_dict, cifar10_data_dir, tmp_path, capsys):
    model, variables, state = resnet_state_dict
    path = tmp_path / "teacher.npz"
    np.savez(path, **state)
    assert import_cli(tmp_path / "run", cifar10_data_dir, path, "teacher.import_prefix=module.",
                      "teacher.import_ignore=('fc.','projector.')") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["source"] == "imported" and summary["feature_dim"] == 512
    assert 0.0 <= summary["knn_accuracy"] <= 1.0

    imported_model, imported, meta = load_teacher(tmp_path / "run" / "teacher")
    assert meta["source"]["path"] == str(path) and meta["sha256"] == summary["sha256"]
    images, _ = load_arrays("cifar10", "test", data_dir=cifar10_data_dir)
    x = (images[:4].astype(np.float32) / 255.0 - MEAN) / STD
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    expected, got = np.asarray(apply(variables, x)), np.asarray(apply(imported, x))
    assert imported_model.stem_padding == 2 and expected.shape == (4, 512)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0


def test_unlisted_extra_keys_and_missing_keys_are_named(resnet_state_dict, cifar10_data_dir, tmp_path, capsys):
    _, _, state = resnet_state_dict
    path = tmp_path / "teacher.npz"
    np.savez(path, **state)
    # Extra keys are dropped only when listed.
    assert import_cli(tmp_path / "a", cifar10_data_dir, path, "teacher.import_prefix=module.") == 2
    err = capsys.readouterr().err
    assert "unexpected" in err and "fc.weight" in err and "projector.0.weight" in err

    partial = {k: v for k, v in state.items() if k != "module.layer3.1.bn2.running_var"}
    path = tmp_path / "partial.npz"
    np.savez(path, **partial)
    assert import_cli(tmp_path / "b", cifar10_data_dir, path, "teacher.import_prefix=module.",
                      "teacher.import_ignore=('fc.','projector.')") == 2
    err = capsys.readouterr().err
    assert "missing" in err and "layer3.1.bn2.running_var" in err
    assert not (tmp_path / "b" / "teacher" / "encoder").exists()


def test_prefix_and_ignore_only_touch_what_is_named():
    state = {"module.conv1.weight": 1, "fc.weight": 2, "module.fc.bias": 3, "other": 4}
    assert encoder_state_dict(state) == state
    assert encoder_state_dict(state, "module.") == {"conv1.weight": 1, "fc.weight": 2, "fc.bias": 3,
                                                    "other": 4}
    assert encoder_state_dict(state, "module.", ("fc.",)) == {"conv1.weight": 1, "other": 4}


def test_unreadable_formats_are_clear_errors(cifar10_data_dir, tmp_path, capsys):
    weird = tmp_path / "teacher.ckpt"
    weird.write_bytes(b"x")
    assert import_cli(tmp_path / "a", cifar10_data_dir, weird) == 2
    assert ".npz" in capsys.readouterr().err
    if importlib.util.find_spec("torch") is None:
        pt = tmp_path / "teacher.pt"
        pt.write_bytes(b"x")
        assert import_cli(tmp_path / "b", cifar10_data_dir, pt) == 2
        err = capsys.readouterr().err.strip()
        assert "pip install torch" in err and ".npz" in err and "\n" not in err
