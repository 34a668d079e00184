"""`ddjax distill mkdt` on a tiny archive: resume equals an uninterrupted run, artifacts are
complete, and bad inputs are one-line errors that leave earlier outputs alone."""

import json
import shutil

import chex
import numpy as np
import pytest

import ddjax.mkdt.distill_stage as mkdt_stage
from ddjax.checkpoint import load_pytree
from ddjax.artifacts.synset import read_synset


def _prepare(toy, workdir):
    toy.write_reps(workdir)
    for command in (["experts"], ["select", "high-loss"], ["select", "random"]):
        code, _, err = toy.cli(command, workdir)
        assert code == 0, err


@pytest.fixture
def prepared(toy_pipeline, tmp_path):
    _prepare(toy_pipeline, tmp_path / "base")
    return toy_pipeline, tmp_path / "base"


def _copy_inputs(base, workdir):
    for name in ("represent", "experts", "select"):
        shutil.copytree(base / name, workdir / name)


def test_distill_resume_equals_uninterrupted_and_writes_artifacts(prepared, tmp_path, monkeypatch):
    toy, base = prepared
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for workdir in (straight, resumed):
        _copy_inputs(base, workdir)
    code, out, err = toy.cli(["distill", "mkdt"], straight)
    assert code == 0, err
    summary = toy.summary(out)
    assert summary["iterations"] == 4 and summary["num_syn"] == 18

    real = mkdt_stage.make_outer_step

    def failing(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt("simulated kill")
            return step(*a)

        return wrapped

    monkeypatch.setattr(mkdt_stage, "make_outer_step", failing)
    with pytest.raises(KeyboardInterrupt):
        toy.cli(["distill", "mkdt"], resumed)
    monkeypatch.setattr(mkdt_stage, "make_outer_step", real)
    code, _, err = toy.cli(["distill", "mkdt"], resumed)
    assert code == 0, err

    for k in (0, 2, 4):
        a, meta_a = read_synset(straight / "distill" / "synsets" / f"iter_{k:06d}")
        b, meta_b = read_synset(resumed / "distill" / "synsets" / f"iter_{k:06d}")
        chex.assert_trees_all_equal(a, b)
        assert meta_a["iteration"] == k and (straight / "distill" / "synsets" / f"iter_{k:06d}" / "grid.png").exists()
    first, _ = read_synset(straight / "distill" / "synsets" / "iter_000000")
    last, meta = read_synset(straight / "distill" / "synsets" / "iter_000004")
    assert not np.allclose(first["images"], last["images"]) and float(last["lr"]) != pytest.approx(0.1)
    # The initial set is the high-loss subset: its images and its teacher representations.
    indices = np.load(straight / "select" / "high_loss_50pct.npy")
    assert meta["init_indices"] == indices.tolist()
    reps = load_pytree(straight / "represent" / "representations")["representations"]
    np.testing.assert_array_equal(first["targets"], reps[indices])
    lines = [json.loads(x) for x in (straight / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)


def test_bad_inputs_are_clear_and_keep_outputs(prepared, tmp_path):
    toy, base = prepared
    code, _, err = toy.cli(["distill", "mkdt"], base, ["distill.num_syn=7"])
    assert code == 2 and "distill.num_syn is 7 but" in err.strip().splitlines()[-1]
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "other_model", ["model.name=convnet_nonorm"])
    assert code == 2 and "ddjax select high-loss" in err  # nothing prepared in that workdir
    _copy_inputs(base, tmp_path / "arch")
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "arch", ["model.name=convnet_nonorm"])
    assert code == 2 and "does not match this run" in err
    _copy_inputs(base, tmp_path / "blowup")
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "blowup", ["distill.lr_lr=1e30", "distill.lr_images=1e30"])
    assert code == 2 and "matching loss became" in err
    # The initial set written before the blow-up is still there and intact.
    kept, _ = read_synset(tmp_path / "blowup" / "distill" / "synsets" / "iter_000000")
    reps = load_pytree(base / "represent" / "representations")["representations"]
    np.testing.assert_array_equal(kept["targets"], reps[np.load(base / "select" / "high_loss_50pct.npy")])
