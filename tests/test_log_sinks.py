"""MetricsLog's other sinks: TensorBoard event files beside metrics.jsonl, optional W&B, and the
non-primary processes of a multi-process run that write nothing."""

import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto import event_pb2

from ddjax.errors import DdjaxError
from ddjax.runlog import MetricsLog


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.delenv("DDJAX_WANDB_PROJECT", raising=False)
    monkeypatch.delenv("DDJAX_TENSORBOARD", raising=False)


def read_events(directory):
    """Every event of the event files directly in ``directory``, in file order, as TensorBoard's
    own loader reads them (it checks each record's framing and checksums)."""
    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        events.extend(LegacyEventFileLoader(str(path)).Load())
    return events


def shown(directory, tag):
    """``[(step, value), ...]`` of ``tag`` as TensorBoard shows the run in ``directory``: its
    event accumulator, which hides the steps that a restart marker redoes."""
    return [(e.step, e.value) for e in EventAccumulator(str(directory)).Reload().Scalars(tag)]


def scalars(events):
    """``{tag: [(step, value), ...]}`` of the summary events."""
    out = {}
    for event in events:
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def restarts(events):
    return [e.step for e in events if e.HasField("session_log")
            and e.session_log.status == event_pb2.SessionLog.START]


def test_event_files_hold_the_scalars_of_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path / "distill", "distill")
    for step in (1, 2, 3):
        log.write(step, loss=np.float32(1.0 / step), lr=0.01 * step, experts=[0, 1],
                  grad_norm={"images": 2.0 * step, "lr": np.float64(10.0 ** (100 * step))},
                  mode="mkdt", converged=False)
    log.close()
    records = log.read()
    expected = {}
    for r in records:  # the scalars of each JSON line, nested dicts flattened with '/'
        for tag, value in [("loss", r["loss"]), ("lr", r["lr"]),
                           ("grad_norm/images", r["grad_norm"]["images"]),
                           ("grad_norm/lr", r["grad_norm"]["lr"])]:
            with np.errstate(over="ignore"):   # float32 in the event file: 1e200 is inf
                expected.setdefault(tag, []).append((r["step"], np.float32(value)))
    found = scalars(read_events(tmp_path / "distill" / "tensorboard"))
    assert found == expected        # lists (experts), strings (mode) and bools are not plotted
    written = sorted(p.name for p in (tmp_path / "distill").iterdir())
    assert written == ["metrics.jsonl", "tensorboard"]


def test_each_series_is_its_own_run_and_a_rewind_marks_the_restart(tmp_path):
    directory = tmp_path / "lgm"
    log = MetricsLog(directory, "lgm")
    for tag in ("a", "b"):
        for step in (0, 5, 10):
            log.write(step, backbone=tag, loss=float(step) + (tag == "b"))
    log.close()
    # A resumed run of backbone a from step 5 on: the JSON file keeps b and a's first steps.
    log = MetricsLog(directory, "lgm")
    log.rewind(4, backbone="a")
    log.write(5, backbone="a", loss=50.0)
    log.close()
    assert [(r["backbone"], r["step"], r["loss"]) for r in log.read()] == [
        ("a", 0, 0.0), ("b", 0, 1.0), ("b", 5, 6.0), ("b", 10, 11.0), ("a", 5, 50.0)]
    runs = directory / "tensorboard"
    assert sorted(p.name for p in runs.iterdir()) == ["backbone=a", "backbone=b"]
    b = read_events(runs / "backbone=b")
    assert scalars(b) == {"loss": [(0, 1.0), (5, 6.0), (10, 11.0)]} and restarts(b) == []
    a = read_events(runs / "backbone=a")
    # Event files keep everything; the restart marker at step 5 tells TensorBoard to hide the
    # older copies of steps >= 5 (metrics.jsonl is the record).
    assert scalars(a) == {"loss": [(0, 0.0), (5, 5.0), (10, 10.0), (5, 50.0)]}
    assert restarts(a) == [5]
    # What TensorBoard shows: the redone steps once, with the resumed run's values.
    assert shown(runs / "backbone=a", "loss") == [(0, 0.0), (5, 50.0)]
    assert shown(runs / "backbone=b", "loss") == [(0, 1.0), (5, 6.0), (10, 11.0)]


def test_tensorboard_is_imported_at_the_first_event_file_and_never_tensorflow(tmp_path):
    # A TensorFlow that fails on import stands for an installed one: writing must not load it.
    fake = tmp_path / "site" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('TensorFlow was imported')\n")
    script = textwrap.dedent(f"""
        import sys
        from ddjax.runlog import MetricsLog
        log = MetricsLog({str(tmp_path / "run")!r}, "teacher")
        assert not [m for m in sys.modules if m.startswith("tensorboard")]
        log.write(1, loss=2.0)
        assert "tensorboard.summary.writer.event_file_writer" in sys.modules
        assert "tensorflow" not in sys.modules and "torch" not in sys.modules
        log.close()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "site")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("DDJAX_TENSORBOARD", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert scalars(read_events(tmp_path / "run" / "tensorboard")) == {"loss": [(1, 2.0)]}


def test_a_non_primary_process_writes_nothing_but_reads(tmp_path):
    MetricsLog(tmp_path / "teacher", "teacher").write(1, loss=2.0)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    other = MetricsLog(tmp_path / "teacher", "teacher", primary=False)
    other.write(2, loss=1.0)
    other.rewind(-1)
    other.close()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [r["loss"] for r in other.read()] == [2.0]
    MetricsLog(tmp_path / "elsewhere", "teacher", primary=False).write(1, loss=1.0)
    assert not (tmp_path / "elsewhere").exists()


def test_tensorboard_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("DDJAX_TENSORBOARD", "0")
    log = MetricsLog(tmp_path, "experts")
    log.write(1, loss=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_wandb_enabled_but_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DDJAX_WANDB_PROJECT", "ddjax-test")
    monkeypatch.setitem(sys.modules, "wandb", None)   # as if not installed
    with pytest.raises(DdjaxError) as err:
        MetricsLog(tmp_path, "distill")
    message = str(err.value)
    assert "\n" not in message and "pip install 'ddjax[wandb]'" in message


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        self.name = kwargs["name"]

    def log(self, data, step):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


def test_wandb_runs_get_the_scalars_per_stage_and_series(tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)   # found by find_spec
    fake.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("DDJAX_WANDB_PROJECT", "ddjax-test")
    stage_dir = tmp_path / "work" / "lgm"
    stage_dir.mkdir(parents=True)
    (stage_dir / "config.json").write_text(json.dumps({"lgm": {"ipc": 1}}))
    log = MetricsLog(stage_dir, "lgm")
    log.write(0, backbone="a", loss=1.0, extra={"x": 2})
    log.write(0, backbone="b", loss=3.0)
    log.write(5, backbone="a", loss=0.5)
    assert [r.finished for r in runs] == [False, False]
    log.close()
    assert [r.finished for r in runs] == [True, True]
    assert [r.name for r in runs] == ["work/lgm/backbone=a", "work/lgm/backbone=b"]
    assert all(r.kwargs["project"] == "ddjax-test" and r.kwargs["group"] == "work"
               and r.kwargs["config"] == {"lgm": {"ipc": 1}} for r in runs)
    assert runs[0].logged == [(0, {"loss": 1.0, "extra/x": 2.0}), (5, {"loss": 0.5})]
    assert runs[1].logged == [(0, {"loss": 3.0})]


def test_wandb_offline_run(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    started = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: started.append(real_init(**kw)) or started[-1])
    for name, value in {"DDJAX_WANDB_PROJECT": "ddjax-test", "WANDB_MODE": "offline",
                        "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    log = MetricsLog(tmp_path / "teacher", "teacher")
    log.write(1, loss=2.0, knn_accuracy=0.25)
    log.write(2, loss=1.5, knn_accuracy=0.5)
    (run,) = started
    # W&B commits a step's row when the next one starts: the summary holds a logged step's values.
    logged = {r["step"]: r for r in log.read()}
    step = run.summary["_step"]
    assert run.offline and step in logged
    assert run.summary["loss"] == logged[step]["loss"]
    assert run.summary["knn_accuracy"] == logged[step]["knn_accuracy"]
    log.close()
    assert list((tmp_path / "teacher" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert capsys.readouterr().out == ""    # W&B's banners on stderr: stdout ends with the summary
