"""The stage protocol: one process per stage directory, only the fields a stage reads recorded,
metrics rewound on resume, and the shared step helpers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest

from ddjax.errors import DdjaxError
from ddjax.runlog import MetricsLog
from ddjax.workdir import check_finite, directory_lock, due, open_stage, read_fields

REPO = Path(__file__).resolve().parents[1]


def _config():
    return ml_collections.ConfigDict({"seed": 1, "data": {"name": "toy", "train_subset": 0},
                                      "distill": {"percent": 2, "iterations": 10}})


def test_read_fields_keeps_only_what_the_stage_declares():
    used = read_fields(_config(), ("seed", "data", "distill.percent", "distill.absent"))
    assert used.to_dict() == {"seed": 1, "data": {"name": "toy", "train_subset": 0},
                              "distill": {"percent": 2}}
    with pytest.raises(AttributeError):
        used.distill.iterations  # an undeclared field cannot be read by mistake


def test_a_missing_section_is_one_line_naming_it():
    with pytest.raises(DdjaxError) as err:
        read_fields(_config(), ("seed", "lgm"), "`ddjax distill lgm`")
    message = str(err.value)
    assert "\n" not in message and "'lgm'" in message and "ddjax distill lgm" in message
    assert "experiments/smoke.py:lgm" in message


def test_changing_a_field_the_stage_does_not_read_never_blocks_it(tmp_path):
    reads = ("seed", "distill.percent")
    with open_stage("eval", read_fields(_config(), reads), tmp_path, "ddjax eval"):
        pass
    changed = _config()
    changed.distill.iterations = 99
    with open_stage("eval", read_fields(changed, reads), tmp_path, "ddjax eval"):
        pass
    assert json.loads((tmp_path / "eval" / "config.json").read_text()) == {
        "seed": 1, "distill": {"percent": 2}}
    changed.distill.percent = 5
    with pytest.raises(DdjaxError, match="distill.percent"):
        with open_stage("eval", read_fields(changed, reads), tmp_path, "ddjax eval"):
            pass


def test_the_lock_is_exclusive_and_released(tmp_path):
    with directory_lock(tmp_path / "stage", "ddjax first"):
        with pytest.raises(DdjaxError) as err:
            with directory_lock(tmp_path / "stage", "ddjax second"):
                pass
        message = str(err.value)
        assert "\n" not in message and "`ddjax first`" in message and f"process {os.getpid()}" in message
    with directory_lock(tmp_path / "stage", "ddjax second"):
        pass


def test_a_second_concurrent_run_is_refused_while_the_first_finishes(toy_pipeline, tmp_path):
    """Two processes, one stage directory: the second exits at once with one line and writes
    nothing; the first is undisturbed and completes its artifact."""
    workdir = tmp_path / "w"
    overrides = [*toy_pipeline.overrides, "teacher.batch_size=8", "teacher.epochs=3",
                 "teacher.knn_bank=0", "teacher.knn_test=0", "teacher.knn_k=5"]
    args = ["teacher", "--config", str(REPO / "experiments" / "smoke.py"), "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    first = subprocess.Popen([sys.executable, "-m", "ddjax.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = workdir / "teacher" / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and str(first.pid) in lock.read_text()):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    code, out, err = toy_pipeline.cli(["teacher"], workdir, [o for o in overrides[len(toy_pipeline.overrides):]])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "in use by `ddjax teacher`" in err and str(first.pid) in err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["stage"] == "teacher"
    assert (workdir / "teacher" / "encoder" / "COMPLETE").exists()
    assert set(before) <= {p.relative_to(workdir) for p in workdir.rglob("*")}


def test_metrics_rewind_drops_only_the_recomputed_records(tmp_path):
    log = MetricsLog(tmp_path, "stage")
    for step in range(5):
        log.write(step, series="a", value=step)
        log.write(step, series="b", value=step)
    log.rewind(2, series="a")
    steps = [(r["series"], r["step"]) for r in log.read()]
    assert steps == [(s, k) for k in range(5) for s in "ab" if s == "b" or k <= 2]
    log.rewind(-1)
    assert log.read() == []


def test_due_and_check_finite():
    assert [s for s in range(1, 12) if due(s, 4, 11)] == [4, 8, 11]
    assert [s for s in range(1, 4) if due(s, 0, 3)] == [3]
    assert check_finite(1.5, "x", "y") == 1.5
    with pytest.raises(DdjaxError, match="the loss at step 3 became nan; lower lr"):
        check_finite(float("nan"), "the loss at step 3", "lower lr")
