"""`ddjax distill mkdt` on a tiny archive: resume equals an uninterrupted run (sets and metrics),
partial sets are redone and other runs' sets refused, and bad inputs are one-line errors that
leave earlier outputs alone."""

import json
import shutil

import chex
import numpy as np
import pytest

import ddjax.mkdt.distill_stage as mkdt_stage
from ddjax.mkdt import stability
from ddjax.artifacts.base import ARRAYS, MARKER
from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.artifacts.selection import SELECTION, read_selection
from ddjax.artifacts.synset import SYNSET, read_synset


def _synset(workdir, iteration):
    return read_synset(SYNSET.locate(workdir, iteration=iteration))


def _indices(workdir, method="high_loss"):
    return read_selection(SELECTION.locate(workdir, method=method, percent=50))[0]


def _metrics(workdir):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "mesh")}
            for line in (workdir / "distill" / "metrics.jsonl").read_text().splitlines()]


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
    every2 = ["distill.checkpoint_every=2"]  # the killed run redoes iteration 3 from checkpoint 2
    for workdir in (straight, resumed):
        _copy_inputs(base, workdir)
    code, out, err = toy.cli(["distill", "mkdt"], straight, every2)
    assert code == 0, err
    summary = toy.summary(out)
    assert summary["iterations"] == 4 and summary["num_syn"] == 18

    real = mkdt_stage.make_outer_step

    def failing(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt("simulated kill")
            return step(*a)

        return wrapped

    monkeypatch.setattr(mkdt_stage, "make_outer_step", failing)
    with pytest.raises(KeyboardInterrupt):
        toy.cli(["distill", "mkdt"], resumed, every2)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3]  # 3 is after the last checkpoint
    monkeypatch.setattr(mkdt_stage, "make_outer_step", real)
    code, _, err = toy.cli(["distill", "mkdt"], resumed, every2)
    assert code == 0, err

    for k in (0, 2, 4):
        a, meta_a = _synset(straight, k)
        b, meta_b = _synset(resumed, k)
        chex.assert_trees_all_equal(a, b)
        assert meta_a["iteration"] == k and (SYNSET.locate(straight, iteration=k) / "grid.png").exists()
    first, _ = _synset(straight, 0)
    last, meta = _synset(straight, 4)
    assert not np.allclose(first["images"], last["images"]) and float(last["lr"]) != pytest.approx(0.1)
    # The initial set is the high-loss subset: its images and its teacher representations.
    indices = _indices(straight)
    assert meta["init_indices"] == indices.tolist()
    reps, _ = read_representations(REPRESENTATIONS.locate(straight))
    np.testing.assert_array_equal(first["targets"], reps[indices])
    lines = _metrics(straight)
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)
    # The resumed run's metrics: each step once, with the uninterrupted run's values.
    assert _metrics(resumed) == lines

    # The last set lost its arrays and marker (a write killed after its checkpoint): it is not
    # complete, the latest complete set is the one before, and a rerun redoes it.
    final = SYNSET.locate(straight, iteration=4)
    shutil.rmtree(final / ARRAYS)
    (final / MARKER).unlink()
    assert (final / "meta.json").exists() and not SYNSET.is_complete(final)
    assert SYNSET.complete_under(final.parent)[-1].name == "iter_000002"
    code, _, err = toy.cli(["distill", "mkdt"], straight, every2)
    assert code == 0, err
    chex.assert_trees_all_equal(_synset(straight, 4)[0], last)

    # Sets made from another initial subset are not taken for this run's: one line naming init.
    other = tmp_path / "other"
    _copy_inputs(base, other)
    shutil.copytree(straight / "distill" / "synsets", other / "distill" / "synsets")
    code, _, err = toy.cli(["distill", "mkdt"], other, ["distill.init=random"])
    last_line = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last_line and "init:" in last_line


def test_bad_inputs_are_clear_and_keep_outputs(prepared, tmp_path):
    toy, base = prepared
    code, _, err = toy.cli(["distill", "mkdt"], base, ["distill.num_syn=7"])
    assert code == 2 and "distill.num_syn is 7 but" in err.strip().splitlines()[-1]
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "other_model", ["model.name=convnet_nonorm"])
    assert code == 2 and "ddjax select high-loss" in err  # nothing prepared in that workdir
    _copy_inputs(base, tmp_path / "arch")
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "arch", ["model.name=convnet_nonorm"])
    assert code == 2 and "made differently" in err and "model:" in err
    code, _, err = toy.cli(["distill", "mkdt"], base, ["distill.lr_init=0.0"])
    assert code == 2 and "distill.lr_init must be a positive number" in err
    code, _, err = toy.cli(["distill", "mkdt"], base, ["distill.init="])
    assert code == 2 and "distill.init must be" in err and err.count("\n") == 1
    # The selection (and the experts) index another subset of the train split: refused in one
    # line naming the field, instead of indexing other images.
    _copy_inputs(base, tmp_path / "subset")
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "subset", ["data.train_subset=30"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last and "train_subset: 0 there, 30 here" in last


@pytest.mark.parametrize("setting, names", [
    ("distill.lr_images=1e12", ("synthetic images reached", "distill.max_image_abs", "distill.lr_images (1e+12)")),
    ("distill.lr_lr=1e6", ("learned inner lr became", "distill.max_lr_ratio", "distill.lr_lr (1e+06)")),
])
def test_divergence_guards_stop_in_one_line_naming_the_setting(prepared, tmp_path, setting, names):
    """An absurd setting exits non-zero at the update that diverged, names the setting, and
    writes nothing of that update: no metrics record, checkpoint or set beyond the last good."""
    toy, base = prepared
    workdir = tmp_path / "blowup"
    _copy_inputs(base, workdir)
    code, out, err = toy.cli(["distill", "mkdt"], workdir, [setting, "distill.checkpoint_every=1"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and last.startswith("ddjax: error:")
    assert all(name in last for name in names), last
    iteration = int(last.split(" at iteration ")[1].split()[0].rstrip(","))
    good = iteration - 1
    assert ("no checkpoint yet" in last) if good == 0 else (f"the checkpoint of iteration {good}" in last)
    assert [m["step"] for m in _metrics(workdir)] == list(range(1, iteration))
    resume = workdir / "distill" / "resume"
    saved = sorted(int(p.name) for p in resume.iterdir() if p.name.isdigit()) if resume.exists() else []
    assert (saved[-1] if saved else 0) == good
    assert [p.name for p in SYNSET.complete_under(workdir / "distill" / "synsets")] == ["iter_000000"]
    # The initial set written before the blow-up is intact.
    kept, _ = _synset(workdir, 0)
    reps, _ = read_representations(REPRESENTATIONS.locate(base))
    np.testing.assert_array_equal(kept["targets"], reps[_indices(base)])


def test_stability_monitor_records_sharpness_and_warns_when_unstable(prepared, tmp_path):
    """At the first iteration and every ``stability_every``: the sharpness at the unroll's start
    and end and the growth of d(theta)/d(lr) in the metrics; a warning only when unstable. The
    toy student at lr 0.1 is stable; the same unroll at an inner lr of 30 is not."""
    toy, base = prepared
    stable, unstable = tmp_path / "stable", tmp_path / "unstable"
    for workdir in (stable, unstable):
        _copy_inputs(base, workdir)
    code, _, err = toy.cli(["distill", "mkdt"], stable, ["distill.stability_every=3"])
    assert code == 0, err
    records = _metrics(stable)
    checked = [r["step"] for r in records if "lambda_max_start" in r]
    assert checked == [1, 4] and "warning" not in err
    first = records[0]
    assert first["lr_lambda_max_start"] == pytest.approx(0.1 * first["lambda_max_start"])
    assert 0 < first["lr_lambda_max_start"] < 2 and first["lr_growth"] < stability.MAX_GROWTH

    code, _, err = toy.cli(["distill", "mkdt"], unstable,
                           ["distill.lr_init=30.0", "distill.iterations=1", "distill.max_lr_ratio=10"])
    warnings = [line for line in err.splitlines() if line.startswith("ddjax: warning:")]
    assert len(warnings) == 1 and "lr*sharpness" in warnings[0] and "distill.lr_init" in warnings[0]
