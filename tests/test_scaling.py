"""Scale-out on CPU: a stage on 8 virtual devices, and on 2 localhost processes x 4 devices
(jax.distributed), writes what the 1-device run writes; a killed process stops its peer in one
line, and the run resumes from its checkpoint on another layout (8 devices -> 1).

Tolerance: the sharded runs sum the minibatch and the gradients in another order, so artifacts
agree to ||a - b|| / ||a|| <= 1e-4, not bit for bit (docs/scaling.md)."""

import json
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ddjax.artifacts.synset import SYNSET, read_synset
from scaling_helpers import (REPO, _env, finish, free_port, relative_error, run_layout,
                             stage_args, start)

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


def test_distill_mkdt_on_2_processes_equals_1_device_and_a_killed_process_stops_its_peer(
        toy_pipeline, tmp_path):
    """2 processes x 4 devices (a mesh of 8 over two hosts; the other stages' tests cover 8
    devices in one process) write the 1-device run's sets and metrics; then one process is
    killed, its peer stops in one line, and the run resumes on 1 device to the same set."""
    toy, base = toy_pipeline, tmp_path / "base"
    _prepare(toy, base)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for workdir in (straight, killed):
        _copy_inputs(base, workdir)
    # Gentle outer steps: the toy's default ones are chaotic enough that a 1e-8 difference in the
    # sharded first iteration grows to 1e-2 in 60 (the loss is the same to 1e-6 for ten).
    long = [*DISTILL, "distill.iterations=30", "distill.save_every=4", "distill.stability_every=30",
            "distill.lr_images=10", "distill.lr_targets=0.1"]
    code, out, err = toy.cli(["distill", "mkdt"], straight, long)
    assert code == 0, err
    assert toy.summary(out)["mesh"] == {"devices": 1, "processes": 1, "shape": {"data": 1}}
    config = str(REPO / "experiments" / "smoke.py")
    runs = start(stage_args(["distill", "mkdt"], killed, [*toy.overrides, *long], config),
                 devices=4, processes=2)
    deadline = time.time() + 300
    while not SYNSET.is_complete(SYNSET.locate(killed, iteration=4)):
        assert time.time() < deadline and runs[1].poll() is None, "no set was written"
        time.sleep(0.2)
    runs[1].kill()
    killed_at = time.time()
    [(code0, _, err0), _] = finish(runs, timeout=120)
    assert time.time() - killed_at < 90  # the heartbeat (20 s) and the watchdog's poll
    last = err0.strip().splitlines()[-1]
    assert code0 != 0 and last.startswith("ddjax: error: process [1] of this 2-process run stopped"), last
    assert not SYNSET.is_complete(SYNSET.locate(killed, iteration=30))
    # What the two processes wrote: the sets and one metrics file (written by process 0 only).
    for k in (0, 4):
        _assert_same_set(straight, killed, k)
    ours, theirs = _metrics(straight)[:4], _metrics(killed)[:4]
    assert [r["step"] for r in theirs] == [1, 2, 3, 4]
    assert theirs[0]["mesh"] == {"devices": 8, "processes": 2, "shape": {"data": 8}}
    for a, b in zip(ours, theirs):
        assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE)
    assert theirs[0]["lambda_max_start"] == pytest.approx(ours[0]["lambda_max_start"], rel=1e-3)
    code, _, err = toy.cli(["distill", "mkdt"], killed, long)  # resumed here, on 1 device
    assert code == 0, err
    _assert_same_set(straight, killed, 30)
    assert [r["step"] for r in _metrics(killed)] == list(range(1, 31))


TEACHER = ["teacher.batch_size=16", "teacher.model_kwargs.width=4", "teacher.projector_hidden_dims=(16,)",
           "teacher.projector_output_dim=16", "teacher.epochs=1", "teacher.knn_every=1"]


def test_teacher_and_represent_on_8_devices_equal_1_device(toy_pipeline, tmp_path):
    """Data parallel: the batch split over 8 devices, BatchNorm statistics over the global batch.

    Two steps (batch 16 of the toy's 36 images): they agree to ~1e-6. Over 8 steps at batch 8 the
    Barlow Twins loss (per-dimension standardisation over 8 samples) and LARS amplify the
    summation-order difference to ~1e-3, which says nothing about the sharding. The
    representations of the 1-device teacher, computed on 8 devices, equal the 1-device ones.
    The 8-device runs read their batches from the source (``data.stream``), the 1-device ones
    load the split: that covers streaming on 8 devices too."""
    from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
    from ddjax.artifacts.teacher import TEACHER as TEACHER_ARTIFACT
    from ddjax.checkpoint import load_pytree

    toy, one, eight = toy_pipeline, tmp_path / "one", tmp_path / "eight"
    for command in (["teacher"], ["represent"]):
        code, out, err = toy.cli(command, one, TEACHER)
        assert code == 0, err
    shutil.copytree(one / "teacher", tmp_path / "eight_represent" / "teacher")
    config = str(REPO / "experiments" / "smoke.py")
    for command, workdir in ((["teacher"], eight), (["represent"], tmp_path / "eight_represent")):
        [(_, out8, _)] = run_layout(stage_args(command, workdir, [*toy.overrides, *TEACHER,
                                                           "data.stream=True"], config),
                                    devices=8)
        assert json.loads(out8.strip().splitlines()[-1])["mesh"]["devices"] == 8
    a = load_pytree(TEACHER_ARTIFACT.locate(one) / "arrays")
    b = load_pytree(TEACHER_ARTIFACT.locate(eight) / "arrays")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert relative_error(x, y) <= TOLERANCE, jax.tree_util.keystr(path)
    reps_one, _ = read_representations(REPRESENTATIONS.locate(one))
    reps_eight, _ = read_representations(REPRESENTATIONS.locate(tmp_path / "eight_represent"))
    assert reps_one.shape == reps_eight.shape == (toy.train_images, reps_one.shape[1])
    assert relative_error(reps_one, reps_eight) <= 1e-5


# Two processes x 2 devices stream 3 batches of 8 rows of a recorded list of records (row r is
# record 2r, an image filled with 2r) and assemble each global batch from their rows.
STREAM_SCRIPT = """
import json, sys
import numpy as np
from ddjax import mesh
from ddjax.data.stream import BatchStream, SplitReader

mesh.initialize(sys.argv[1], 2, int(sys.argv[2]))
mesh.build()
asked = []

class Records(list):
    def __getitems__(self, indices):
        asked.extend(indices)
        return [self[i] for i in indices]

records = Records({"image": np.full((2, 2, 3), i, np.uint8), "label": i} for i in range(50))
batches = [np.asarray(b) for b in json.loads(sys.argv[3])]
rows, whole = mesh.local_rows(8), []
for images, labels in BatchStream(SplitReader(records, keep=np.arange(0, 50, 2)), batches, rows):
    batch = mesh.fetch(mesh.from_local_rows({"images": images, "labels": labels}, 8))
    whole.append([batch["images"][:, 0, 0, 0].tolist(), batch["labels"].tolist()])
says = [mesh.primary_says(mesh.is_primary() == want) for want in (True, False)]
print(json.dumps({"rows": rows.tolist(), "asked": asked, "whole": whole, "says": says}))
mesh.finish()
"""


def test_each_of_2_processes_reads_only_its_rows_and_the_batch_is_whole():
    """Also: a decision taken by each process's own value (a clock) is process 0's on both."""
    batches = [np.random.default_rng(b).permutation(25)[:8].tolist() for b in range(3)]
    coordinator = f"127.0.0.1:{free_port()}"
    runs = [subprocess.Popen([sys.executable, "-c", STREAM_SCRIPT, coordinator, str(pid),
                              json.dumps(batches)], cwd=REPO, env=_env(2), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for pid in range(2)]
    results = finish(runs, timeout=120)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    # The runtime prints "[Gloo] ..." lines to stdout too.
    reports = [json.loads(next(line for line in out.splitlines() if line.startswith("{")))
               for _, out, _ in results]
    rows = [report["rows"] for report in reports]
    assert sorted(rows[0] + rows[1]) == list(range(8)) and len(rows[0]) == len(rows[1]) == 4
    for report in reports:
        # Records of only this process's rows were read, batch after batch.
        assert report["asked"] == [2 * batch[r] for batch in batches for r in report["rows"]]
        # Every process holds the whole global batch after the gather.
        assert report["whole"] == [[[2 * i for i in batch]] * 2 for batch in batches]
        assert report["says"] == [True, False]


def test_experts_on_2_processes_streamed_equal_1_device(toy_pipeline, tmp_path):
    """A group of 8 experts split over 2 processes x 4 devices, one per device, each process
    reading only its experts' minibatches from the source (``data.stream``); every trajectory
    written once. The 1-device run loads the split."""
    from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore

    toy, one, eight = toy_pipeline, tmp_path / "one", tmp_path / "eight"
    experts = ["experts.num_experts=8", "experts.experts_per_program=8"]
    for workdir in (one, eight):
        toy.write_reps(workdir)
    code, _, err = toy.cli(["experts"], one, experts)
    assert code == 0, err
    config = str(REPO / "experiments" / "smoke.py")
    run_layout(stage_args(["experts"], eight, [*toy.overrides, *experts, "data.stream=True"],
                          config), devices=4, processes=2)
    a, b = (TrajectoryStore.open(TRAJECTORIES.locate(w)) for w in (one, eight))
    assert a.complete_experts() == b.complete_experts() == list(range(8))
    for e in range(8):
        for epoch in a.meta["kept_epochs"]:
            for x, y in zip(*(jax.tree.leaves(s.load_epoch(e, epoch)) for s in (a, b))):
                assert relative_error(x, y) <= TOLERANCE


EVAL = ["mkdt_eval.rows=('random', 'full')", "mkdt_eval.downstream=('toy',)",
        "mkdt_eval.label_fractions=(0.5,)", "mkdt_eval.seeds=(0, 1, 2, 3, 4, 5, 6, 7)",
        "mkdt_eval.epochs=1", "mkdt_eval.batch_size=12", "mkdt_eval.probe_steps=2",
        "mkdt_eval.feature_batch=8"]


def test_eval_on_8_devices_equals_1_device(toy_pipeline, tmp_path):
    """The seeds split over the devices (8 seeds, one per device): the encoders pre-trained by
    KD on the random subset and on the whole split, their features' probes and the accuracies
    equal the 1-device run's. The 8-device run reads the data from the source (``data.stream``:
    the whole split's minibatches step by step, each device its seed's)."""
    from ddjax.artifacts.results import MKDT_ENCODERS, MKDT_RESULT, read_result

    toy, one, eight = toy_pipeline, tmp_path / "one", tmp_path / "eight"
    for workdir in (one, eight):
        toy.write_reps(workdir)
        code, _, err = toy.cli(["select", "random"], workdir)
        assert code == 0, err
    code, _, err = toy.cli(["eval", "mkdt"], one, EVAL)
    assert code == 0, err
    config = str(REPO / "experiments" / "smoke.py")
    [(_, out8, _)] = run_layout(stage_args(["eval", "mkdt"], eight,
                                           [*toy.overrides, *EVAL, "data.stream=True"], config),
                                devices=8)
    assert json.loads(out8.strip().splitlines()[-1])["mesh"]["devices"] == 8
    for row in ("random", "full"):
        a, _ = MKDT_ENCODERS.read(MKDT_ENCODERS.locate(one, row=row))
        b, _ = MKDT_ENCODERS.read(MKDT_ENCODERS.locate(eight, row=row))
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
            assert relative_error(x, y) <= TOLERANCE, (row, jax.tree_util.keystr(path))
        ours, theirs = (read_result(MKDT_RESULT, MKDT_RESULT.locate(w, row=row, dataset="toy"))
                        for w in (one, eight))
        assert theirs["seeds"] == ours["seeds"] == list(range(8))
        assert theirs["accuracy"] == ours["accuracy"], row
        for fraction, losses in ours["probe_loss"].items():
            np.testing.assert_allclose(theirs["probe_loss"][fraction], losses, rtol=1e-4)
