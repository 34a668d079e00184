"""`ddjax experts` and `ddjax select` end to end on a tiny archive: resume equals an
uninterrupted run, selections follow the scores and are never silently replaced, bad inputs are
one-line errors."""

import json
import shutil

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import ddjax.mkdt.epochs as expert_epochs
from ddjax.artifacts.base import ARRAYS, MARKER
from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.artifacts.selection import SELECTION, read_selection, write_selection
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.data import load_arrays, normalize, spec_for
from ddjax.errors import DdjaxError
from ddjax.models import build_model


def _trajectories(workdir):
    store = TrajectoryStore.open(TRAJECTORIES.locate(workdir))
    return {(e, t): store.load_epoch(e, t) for e in store.complete_experts() for t in store.meta["kept_epochs"]}


def _metrics(workdir, stage):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "mesh")}
            for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


def _selection(workdir, method, percent):
    return read_selection(SELECTION.locate(workdir, method=method, percent=percent))


@pytest.mark.parametrize("fail_at_call", [2, 4])
def test_resumed_experts_equal_an_uninterrupted_run(toy_pipeline, tmp_path, monkeypatch, fail_at_call):
    toy = toy_pipeline
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for workdir in (straight, resumed):
        toy.write_reps(workdir)
    code, out, err = toy.cli(["experts"], straight)
    assert code == 0, err
    assert toy.summary(out)["experts"] == 3

    real = expert_epochs.make_student_epoch

    def failing_factory(*args, **kwargs):
        epoch_fn, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) == fail_at_call:
                raise KeyboardInterrupt("simulated kill")
            return epoch_fn(*a)

        return wrapped

    monkeypatch.setattr(expert_epochs, "make_student_epoch", failing_factory)
    with pytest.raises(KeyboardInterrupt):
        toy.cli(["experts"], resumed)
    monkeypatch.setattr(expert_epochs, "make_student_epoch", real)
    code, out, err = toy.cli(["experts"], resumed)
    assert code == 0, err

    expected, got = _trajectories(straight), _trajectories(resumed)
    assert sorted(got) == sorted(expected) and len(got) == 3 * 4
    for key in expected:
        chex.assert_trees_all_equal(got[key], expected[key])
    # One record per (group, epoch), none twice, the same values as the uninterrupted run's.
    records = _metrics(resumed, "experts")
    assert len({r["step"] for r in records}) == len(records) == 2 * 3
    assert records == _metrics(straight, "experts")


def test_select_high_loss_follows_expert_scores(toy_pipeline, tmp_path):
    toy = toy_pipeline
    toy.write_reps(tmp_path)
    assert toy.cli(["experts"], tmp_path)[0] == 0
    code, out, err = toy.cli(["select", "high-loss"], tmp_path)
    assert code == 0, err
    (top10, meta10), (top50, _) = (_selection(tmp_path, "high_loss", p) for p in (10, 50))
    scores = np.asarray(SELECTION.read(SELECTION.locate(tmp_path, method="high_loss", percent=50))[0]["scores"])
    assert meta10["experts"] == [0, 1, 2] and meta10["epoch"] == 1 and meta10["dataset"] == "toy"
    assert len(top10) == int(0.1 * toy.train_images) and len(top50) == int(0.5 * toy.train_images)
    np.testing.assert_array_equal(top50[: len(top10)], top10)
    # Every selected example scores at least as high as every example left out.
    assert scores[top50].min() >= np.delete(scores, top50).max()
    # The scores are the mean over experts of the epoch-1 per-example MSE, recomputed here.
    store = TrajectoryStore.open(TRAJECTORIES.locate(tmp_path))
    data_overrides = dict(item.split("=", 1) for item in toy.overrides)
    images, _ = load_arrays("toy", "train", archive=data_overrides["data.archive"],
                            data_dir=data_overrides["data.data_dir"])
    spec = spec_for("toy", archive=data_overrides["data.archive"], data_dir=data_overrides["data.data_dir"])
    x = normalize(images, spec.mean, spec.std)
    reps, _ = read_representations(REPRESENTATIONS.locate(tmp_path))
    model = build_model("convnet_d1", num_outputs=5, width=4, image_size=(8, 8))
    manual = np.mean([np.mean((np.asarray(model.apply({"params": store.load_epoch(e, 1)}, jnp.asarray(x)))
                               - reps) ** 2, axis=1) for e in range(3)], axis=0)
    np.testing.assert_allclose(scores, manual, rtol=1e-4, atol=1e-6)

    # Each select command records only what it reads: the random subset does not depend on the
    # student, so another model width does not block it, while high-loss (which scores with the
    # student) refuses it.
    code, out, err = toy.cli(["select", "random"], tmp_path, ["model.width=8"])
    assert code == 0, err
    assert json.loads((tmp_path / "select" / "config.random.json").read_text()) == {
        "seed": 0, "data": json.loads((tmp_path / "select" / "config.high-loss.json").read_text())["data"],
        "select": {"epoch": 1, "percents": [10, 50]}}
    code, _, err = toy.cli(["select", "high-loss"], tmp_path, ["model.width=8"])
    assert code == 2 and "model.width" in err
    random10, _ = _selection(tmp_path, "random", 10)
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
    last = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last and "model:" in last
    # Representations of another dataset are refused, in one line naming the field.
    toy.write_reps(tmp_path / "other_data", dataset="cifar10")
    code, out, err = toy.cli(["experts"], tmp_path / "other_data")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last and "dataset:" in last and err.count("\n") == 1


def test_rejected_settings_are_not_recorded(toy_pipeline, tmp_path):
    toy = toy_pipeline
    code, _, err = toy.cli(["experts"], tmp_path, ["experts.loss=kl"])
    assert code == 2 and "experts.loss must be" in err
    assert not (tmp_path / "experts" / "config.json").exists()
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path, ["distill.mode=sgd"])
    assert code == 2 and "distill.mode must be" in err and not (tmp_path / "distill").exists()


def test_selections_are_never_silently_replaced_and_partial_ones_are_redone(toy_pipeline, tmp_path):
    toy, first = toy_pipeline, tmp_path / "first"
    assert toy.cli(["select", "random"], first)[0] == 0  # random needs neither experts nor a model
    directory = SELECTION.locate(first, method="random", percent=50)
    indices, meta = read_selection(directory)
    assert meta["seed"] == 0 and meta["size"] == len(indices) == 18

    # Another seed's selection where this one is: refused in one line naming the field.
    other = tmp_path / "other"
    shutil.copytree(first / "select", other / "select", ignore=shutil.ignore_patterns("config.*.json"))
    code, _, err = toy.cli(["select", "random"], other, ["seed=1"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last and "seed:" in last and err.count("\n") == 1
    # The same identity with other indices is refused too.
    with pytest.raises(DdjaxError, match="different selection"):
        write_selection(directory, indices[::-1], {k: meta[k] for k in SELECTION.identity if k in meta})

    # A selection without its marker (a killed write) is not complete; a rerun redoes it.
    shutil.rmtree(directory / ARRAYS)
    (directory / MARKER).unlink()
    assert not SELECTION.is_complete(directory)
    assert toy.cli(["select", "random"], first)[0] == 0
    np.testing.assert_array_equal(read_selection(directory)[0], indices)
