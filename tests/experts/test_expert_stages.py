"""`ddjax experts` and `ddjax select` end to end on a tiny archive: resume equals an
uninterrupted run, selections follow the scores, bad inputs are one-line errors."""

import json
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import ddjax.experts.stage as expert_stage
from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.cli import main
from ddjax.data import load_arrays, normalize, spec_for
from ddjax.experts.store import TrajectoryStore
from ddjax.models import build_model

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke.py")
TRAIN_IMAGES = 3 * 12


@pytest.fixture
def toy(make_archive, tmp_path):
    """A 3-class 8x8 archive, its overrides, and a writer of stand-in teacher representations."""
    archive = make_archive(name="toy", counts={"train": 12, "test": 2}, sizes=[(8, 8)])
    overrides = ["data.name=toy", f"data.archive={archive.root}", f"data.data_dir={tmp_path / 'tfds'}",
                 "data.train_subset=0", "model.width=4", "experts.batch_size=8", "experts.num_experts=3",
                 "experts.epochs=3", "experts.experts_per_program=2", "select.percents=(10, 50)"]

    def write_reps(workdir, rows=TRAIN_IMAGES):
        reps = np.random.default_rng(1).normal(size=(rows, 5)).astype(np.float32)
        save_pytree(Path(workdir) / "represent" / "representations", {"representations": reps})

    return overrides, write_reps


def _cli(command, workdir, overrides, capsys):
    args = command + ["--config", SMOKE, "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured


def _trajectories(workdir):
    store = TrajectoryStore.open(Path(workdir) / "experts" / "trajectories")
    return {(e, t): store.load_epoch(e, t) for e in store.complete_experts() for t in store.meta["kept_epochs"]}


@pytest.mark.parametrize("fail_at_call", [2, 4])
def test_resumed_experts_equal_an_uninterrupted_run(toy, tmp_path, capsys, monkeypatch, fail_at_call):
    overrides, write_reps = toy
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for workdir in (straight, resumed):
        write_reps(workdir)
    code, out = _cli(["experts"], straight, overrides, capsys)
    assert code == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["experts"] == 3

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
        _cli(["experts"], resumed, overrides, capsys)
    monkeypatch.setattr(expert_stage, "make_epoch_fn", real)
    code, out = _cli(["experts"], resumed, overrides, capsys)
    assert code == 0, out.err

    expected, got = _trajectories(straight), _trajectories(resumed)
    assert sorted(got) == sorted(expected) and len(got) == 3 * 4
    for key in expected:
        chex.assert_trees_all_equal(got[key], expected[key])


def test_select_high_loss_follows_expert_scores(toy, tmp_path, capsys):
    overrides, write_reps = toy
    write_reps(tmp_path)
    assert _cli(["experts"], tmp_path, overrides, capsys)[0] == 0
    code, out = _cli(["select", "high-loss"], tmp_path, overrides, capsys)
    assert code == 0, out.err
    scores = np.load(tmp_path / "select" / "high_loss_scores.npy")
    top10, top50 = (np.load(tmp_path / "select" / f"high_loss_{p}pct.npy") for p in (10, 50))
    assert len(top10) == int(0.1 * TRAIN_IMAGES) and len(top50) == int(0.5 * TRAIN_IMAGES)
    np.testing.assert_array_equal(top50[: len(top10)], top10)
    # Every selected example scores at least as high as every example left out.
    assert scores[top50].min() >= np.delete(scores, top50).max()
    # The scores are the mean over experts of the epoch-1 per-example MSE, recomputed here.
    store = TrajectoryStore.open(tmp_path / "experts" / "trajectories")
    data_overrides = dict(item.split("=", 1) for item in overrides)
    images, _ = load_arrays("toy", "train", archive=data_overrides["data.archive"],
                            data_dir=data_overrides["data.data_dir"])
    spec = spec_for("toy", archive=data_overrides["data.archive"], data_dir=data_overrides["data.data_dir"])
    x = normalize(images, spec.mean, spec.std)
    reps = load_pytree(tmp_path / "represent" / "representations")["representations"]
    model = build_model("convnet", num_outputs=5, width=4, image_size=(8, 8))
    manual = np.mean([np.mean((np.asarray(model.apply({"params": store.load_epoch(e, 1)}, jnp.asarray(x)))
                               - reps) ** 2, axis=1) for e in range(3)], axis=0)
    np.testing.assert_allclose(scores, manual, rtol=1e-4, atol=1e-6)

    code, out = _cli(["select", "random"], tmp_path, overrides, capsys)
    assert code == 0
    random10 = np.load(tmp_path / "select" / "random_10pct.npy")
    assert len(random10) == len(top10) and len(set(random10.tolist())) == len(random10)


def test_bad_inputs_are_one_line_errors(toy, tmp_path, capsys):
    overrides, write_reps = toy
    code, out = _cli(["experts"], tmp_path / "no_reps", overrides, capsys)
    last = out.err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("ddjax: error:") and "ddjax represent" in last
    write_reps(tmp_path / "wrong_n", rows=TRAIN_IMAGES + 1)
    code, out = _cli(["experts"], tmp_path / "wrong_n", overrides, capsys)
    assert code == 2 and "have shape (37, 5)" in out.err
    write_reps(tmp_path / "ok")
    assert _cli(["experts"], tmp_path / "ok", overrides, capsys)[0] == 0
    code, out = _cli(["experts"], tmp_path / "ok", overrides + ["experts.epochs=4"], capsys)
    assert code == 2 and "experts.epochs" in out.err
    code, out = _cli(["select", "high-loss"], tmp_path / "ok", overrides + ["model.name=resnet10"], capsys)
    assert code == 2 and "does not match this run" in out.err
