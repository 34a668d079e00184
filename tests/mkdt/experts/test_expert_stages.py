"""`ddjax experts` and `ddjax select` end to end on a tiny archive: resume equals an
uninterrupted run, selections follow the scores, bad inputs are one-line errors."""

from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import ddjax.mkdt.experts_stage as expert_stage
from ddjax.checkpoint import load_pytree
from ddjax.data import load_arrays, normalize, spec_for
from ddjax.artifacts.trajectories import TrajectoryStore
from ddjax.models import build_model


def _trajectories(workdir):
    store = TrajectoryStore.open(Path(workdir) / "experts" / "trajectories")
    return {(e, t): store.load_epoch(e, t) for e in store.complete_experts() for t in store.meta["kept_epochs"]}


@pytest.mark.parametrize("fail_at_call", [2, 4])
def test_resumed_experts_equal_an_uninterrupted_run(toy_pipeline, tmp_path, monkeypatch, fail_at_call):
    toy = toy_pipeline
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for workdir in (straight, resumed):
        toy.write_reps(workdir)
    code, out, err = toy.cli(["experts"], straight)
    assert code == 0, err
    assert toy.summary(out)["experts"] == 3

    real = expert_stage.make_epoch_fn

    def failing_factory(*args, **kwargs):
        epoch_fn, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) == fail_at_call:
                raise KeyboardInterrupt("simulated kill")
            return epoch_fn(*a)

        return wrapped

    monkeypatch.setattr(expert_stage, "make_epoch_fn", failing_factory)
    with pytest.raises(KeyboardInterrupt):
        toy.cli(["experts"], resumed)
    monkeypatch.setattr(expert_stage, "make_epoch_fn", real)
    code, out, err = toy.cli(["experts"], resumed)
    assert code == 0, err

    expected, got = _trajectories(straight), _trajectories(resumed)
    assert sorted(got) == sorted(expected) and len(got) == 3 * 4
    for key in expected:
        chex.assert_trees_all_equal(got[key], expected[key])


def test_select_high_loss_follows_expert_scores(toy_pipeline, tmp_path):
    toy = toy_pipeline
    toy.write_reps(tmp_path)
    assert toy.cli(["experts"], tmp_path)[0] == 0
    code, out, err = toy.cli(["select", "high-loss"], tmp_path)
    assert code == 0, err
    scores = np.load(tmp_path / "select" / "high_loss_scores.npy")
    top10, top50 = (np.load(tmp_path / "select" / f"high_loss_{p}pct.npy") for p in (10, 50))
    assert len(top10) == int(0.1 * toy.train_images) and len(top50) == int(0.5 * toy.train_images)
    np.testing.assert_array_equal(top50[: len(top10)], top10)
    # Every selected example scores at least as high as every example left out.
    assert scores[top50].min() >= np.delete(scores, top50).max()
    # The scores are the mean over experts of the epoch-1 per-example MSE, recomputed here.
    store = TrajectoryStore.open(tmp_path / "experts" / "trajectories")
    data_overrides = dict(item.split("=", 1) for item in toy.overrides)
    images, _ = load_arrays("toy", "train", archive=data_overrides["data.archive"],
                            data_dir=data_overrides["data.data_dir"])
    spec = spec_for("toy", archive=data_overrides["data.archive"], data_dir=data_overrides["data.data_dir"])
    x = normalize(images, spec.mean, spec.std)
    reps = load_pytree(tmp_path / "represent" / "representations")["representations"]
    model = build_model("convnet", num_outputs=5, width=4, image_size=(8, 8))
    manual = np.mean([np.mean((np.asarray(model.apply({"params": store.load_epoch(e, 1)}, jnp.asarray(x)))
                               - reps) ** 2, axis=1) for e in range(3)], axis=0)
    np.testing.assert_allclose(scores, manual, rtol=1e-4, atol=1e-6)

    code, out, err = toy.cli(["select", "random"], tmp_path)
    assert code == 0
    random10 = np.load(tmp_path / "select" / "random_10pct.npy")
    assert len(random10) == len(top10) and len(set(random10.tolist())) == len(random10)


def test_bad_inputs_are_one_line_errors(toy_pipeline, tmp_path):
    toy = toy_pipeline
    code, out, err = toy.cli(["experts"], tmp_path / "no_reps")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("ddjax: error:") and "ddjax represent" in last
    toy.write_reps(tmp_path / "wrong_n", rows=toy.train_images + 1)
    code, out, err = toy.cli(["experts"], tmp_path / "wrong_n")
    assert code == 2 and "have shape (37, 5)" in err
    toy.write_reps(tmp_path / "ok")
    assert toy.cli(["experts"], tmp_path / "ok")[0] == 0
    code, out, err = toy.cli(["experts"], tmp_path / "ok", ["experts.epochs=4"])
    assert code == 2 and "experts.epochs" in err
    code, out, err = toy.cli(["select", "high-loss"], tmp_path / "ok", ["model.name=resnet10"])
    assert code == 2 and "does not match this run" in err


def test_rejected_settings_are_not_recorded(toy_pipeline, tmp_path):
    toy = toy_pipeline
    code, _, err = toy.cli(["experts"], tmp_path, ["experts.loss=kl"])
    assert code == 2 and "experts.loss must be" in err
    assert not (tmp_path / "experts" / "config.json").exists()
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path, ["distill.mode=sgd"])
    assert code == 2 and "distill.mode must be" in err and not (tmp_path / "distill").exists()
