"""Scale-out on CPU: a stage on 8 virtual devices, and on 2 localhost processes x 4 devices
(jax.distributed), writes what the 1-device run writes; a killed process stops its peer in one
line, and the run resumes from its checkpoint on another layout (8 devices -> 1).

Tolerance: the sharded runs sum the minibatch and the gradients in another order, so artifacts
agree to ||a - b|| / ||a|| <= 1e-4, not bit for bit (docs/scaling.md)."""

import json
import shutil
import time

import jax
import numpy as np
import pytest

from ddjax.artifacts.synset import SYNSET, read_synset
from scaling_helpers import REPO, finish, relative_error, run_layout, stage_args, start

TOLERANCE = 1e-4
DISTILL = ["distill.batch_syn=8", "distill.stability_every=2"]  # 8 divides over 8 devices


def _prepare(toy, workdir):
    toy.write_reps(workdir)
    for command in (["experts"], ["select", "high-loss"]):
        code, _, err = toy.cli(command, workdir)
        assert code == 0, err


def _copy_inputs(base, workdir):
    for name in ("represent", "experts", "select"):
        shutil.copytree(base / name, workdir / name)


def _assert_same_set(a_dir, b_dir, iteration):
    a, _ = read_synset(SYNSET.locate(a_dir, iteration=iteration))
    b, _ = read_synset(SYNSET.locate(b_dir, iteration=iteration))
    for name in ("images", "targets", "lr"):
        assert relative_error(a[name], b[name]) <= TOLERANCE, name


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "distill" / "metrics.jsonl").read_text().splitlines()]


def test_distill_mkdt_on_8_devices_and_2_processes_equals_1_device(toy_pipeline, tmp_path):
    toy, base = toy_pipeline, tmp_path / "base"
    _prepare(toy, base)
    one, eight, two_by_four = tmp_path / "one", tmp_path / "eight", tmp_path / "two_by_four"
    for workdir in (one, eight, two_by_four):
        _copy_inputs(base, workdir)
    code, out, err = toy.cli(["distill", "mkdt"], one, DISTILL)
    assert code == 0, err
    assert toy.summary(out)["mesh"] == {"devices": 1, "processes": 1, "shape": {"data": 1}}
    config = str(REPO / "experiments" / "smoke.py")
    overrides = [*toy.overrides, *DISTILL]
    [(_, out8, _)] = run_layout(stage_args(["distill", "mkdt"], eight, overrides, config), devices=8)
    results = run_layout(stage_args(["distill", "mkdt"], two_by_four, overrides, config),
                         devices=4, processes=2)
    summaries = [json.loads(out.strip().splitlines()[-1]) for out in [out8] + [r[1] for r in results]]
    assert summaries[0]["mesh"] == {"devices": 8, "processes": 1, "shape": {"data": 8}}
    assert all(s["mesh"] == {"devices": 8, "processes": 2, "shape": {"data": 8}} for s in summaries[1:])
    for workdir in (eight, two_by_four):
        for k in (0, 2, 4):
            _assert_same_set(one, workdir, k)
        # One metrics file, written once (by process 0), with the 1-device run's figures.
        ours, theirs = _metrics(one), _metrics(workdir)
        assert [r["step"] for r in theirs] == [1, 2, 3, 4]
        for a, b in zip(ours, theirs):
            assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE)
            assert b["lambda_max_start"] == pytest.approx(a["lambda_max_start"], rel=1e-3) \
                if "lambda_max_start" in a else "lambda_max_start" not in b
        assert theirs[0]["mesh"]["devices"] == 8


def test_killed_process_stops_its_peer_and_the_run_resumes_on_one_device(toy_pipeline, tmp_path):
    toy, base = toy_pipeline, tmp_path / "base"
    _prepare(toy, base)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for workdir in (straight, killed):
        _copy_inputs(base, workdir)
    # Gentle outer steps: the toy's default ones are chaotic enough that a 1e-8 difference in the
    # sharded first iteration grows to 1e-2 in 60 (the loss is the same to 1e-6 for ten).
    long = [*DISTILL, "distill.iterations=30", "distill.save_every=30", "distill.stability_every=0",
            "distill.lr_images=10", "distill.lr_targets=0.1"]
    code, _, err = toy.cli(["distill", "mkdt"], straight, long)
    assert code == 0, err
    config = str(REPO / "experiments" / "smoke.py")
    runs = start(stage_args(["distill", "mkdt"], killed, [*toy.overrides, *long], config),
                 devices=4, processes=2)
    resume = killed / "distill" / "resume"
    deadline = time.time() + 300
    while not (resume.exists() and any(p.name.isdigit() for p in resume.iterdir())):
        assert time.time() < deadline and runs[1].poll() is None, "no checkpoint was written"
        time.sleep(0.2)
    runs[1].kill()
    killed_at = time.time()
    [(code0, out0, err0), _] = finish(runs, timeout=120)
    assert time.time() - killed_at < 90  # the heartbeat (20 s) and the watchdog's poll
    last = err0.strip().splitlines()[-1]
    assert code0 != 0 and last.startswith("ddjax: error: process [1] of this 2-process run stopped"), last
    assert not SYNSET.is_complete(SYNSET.locate(killed, iteration=30))
    code, _, err = toy.cli(["distill", "mkdt"], killed, long)  # resumed here, on 1 device
    assert code == 0, err
    _assert_same_set(straight, killed, 30)
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == list(range(1, 31))


TEACHER = ["teacher.batch_size=8", "teacher.model_kwargs.width=4", "teacher.projector_hidden_dims=(16,)",
           "teacher.projector_output_dim=16", "teacher.epochs=2", "teacher.knn_every=1"]


def test_teacher_on_8_devices_equals_1_device(toy_pipeline, tmp_path):
    """Data parallel: the batch split over 8 devices, BatchNorm statistics over the global batch."""
    from ddjax.artifacts.teacher import TEACHER as TEACHER_ARTIFACT
    from ddjax.checkpoint import load_pytree

    toy, one, eight = toy_pipeline, tmp_path / "one", tmp_path / "eight"
    code, out, err = toy.cli(["teacher"], one, TEACHER)
    assert code == 0, err
    config = str(REPO / "experiments" / "smoke.py")
    [(_, out8, _)] = run_layout(stage_args(["teacher"], eight, [*toy.overrides, *TEACHER], config),
                                devices=8)
    assert json.loads(out8.strip().splitlines()[-1])["mesh"]["devices"] == 8
    a = load_pytree(TEACHER_ARTIFACT.locate(one) / "arrays")
    b = load_pytree(TEACHER_ARTIFACT.locate(eight) / "arrays")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert relative_error(x, y) <= TOLERANCE, jax.tree_util.keystr(path)


def test_experts_on_8_devices_equal_1_device(toy_pipeline, tmp_path):
    """A group of 8 experts split over 8 devices, one per device; every trajectory written once."""
    from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore

    toy, one, eight = toy_pipeline, tmp_path / "one", tmp_path / "eight"
    experts = ["experts.num_experts=8", "experts.experts_per_program=8"]
    for workdir in (one, eight):
        toy.write_reps(workdir)
    code, _, err = toy.cli(["experts"], one, experts)
    assert code == 0, err
    config = str(REPO / "experiments" / "smoke.py")
    run_layout(stage_args(["experts"], eight, [*toy.overrides, *experts], config), devices=8)
    a, b = (TrajectoryStore.open(TRAJECTORIES.locate(w)) for w in (one, eight))
    assert a.complete_experts() == b.complete_experts() == list(range(8))
    for e in range(8):
        for epoch in a.meta["kept_epochs"]:
            for x, y in zip(*(jax.tree.leaves(s.load_epoch(e, epoch)) for s in (a, b))):
                assert relative_error(x, y) <= TOLERANCE
