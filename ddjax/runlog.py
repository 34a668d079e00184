"""What a run tells its user: a progress bar with ETA, JSON-lines metrics, a one-line summary.

Every stage writes ``metrics.jsonl`` in its directory (one JSON object per logged step, appended;
a resumed run first rewinds the file to its checkpoint, so no step appears twice) and ends by
printing one JSON line naming the stage, its directory, its artifacts and its key figures, which
scripts can parse. The same records' scalars also go to TensorBoard event files under
``<stage dir>/tensorboard/`` and, when ``DDJAX_WANDB_PROJECT`` is set, to Weights & Biases; those
are views for people: ``metrics.jsonl`` is the record (see docs/report.md).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
import types
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ddjax.errors import DdjaxError

METRICS_FILE_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Fields that name one series of a stage whose steps restart per series (LGM's ``backbone``,
# MKDT evaluation's ``row`` and ``dataset``): each series is its own TensorBoard run
# (``tensorboard/backbone=dinov2_vitb``) and W&B run, so their curves overlay instead of mixing.
SERIES_FIELDS = ("backbone", "row", "dataset")
_NOT_METRICS = ("stage", "step", "time")


def to_jsonable(value: Any) -> Any:
    """Turn numpy / jax scalars and arrays into plain Python values for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    return value


def write_json_atomic(path: str | Path, value: Any, *, sort_keys: bool = False) -> None:
    """Write ``value`` as indented JSON through a temporary file and a rename, so a reader never
    sees half a file (results that a rerun trusts, store metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(value), indent=2, sort_keys=sort_keys) + "\n")
    tmp.replace(path)


class MetricsLog:
    """Appends one JSON object per call to ``<directory>/metrics.jsonl``, the authoritative record,
    and sends each record's scalars to TensorBoard and (when configured) W&B.

    Scalars are the numbers of a record, nested dicts flattened (``grad_norm/images``); lists,
    strings and booleans are not plotted. TensorBoard event files go to
    ``<directory>/tensorboard/`` (unless ``DDJAX_TENSORBOARD=0``); W&B is used when
    ``DDJAX_WANDB_PROJECT`` names a project (``WANDB_MODE=offline`` works without a network).
    ``primary=False`` (the non-zero processes of a multi-process run) writes and rewinds
    nothing; ``read`` still reads. Call ``close`` when done (it also runs at process exit).
    """

    def __init__(self, directory: str | Path, stage: str, *, primary: bool = True,
                 header: dict | None = None):
        self.path = Path(directory) / METRICS_FILE_NAME
        self.stage = stage
        self.primary = bool(primary)
        self._header = dict(header or {})  # added to this process's first record (e.g. the mesh)
        self._sinks: list = []
        if not self.primary:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensorboard = os.environ.get("DDJAX_TENSORBOARD", "1").strip().lower()
        if tensorboard not in ("0", "false", "no", "off"):
            self._sinks.append(_TensorBoard(self.path.parent / TENSORBOARD_DIR))
        project = os.environ.get("DDJAX_WANDB_PROJECT", "").strip()
        if project:
            self._sinks.append(_WandB(self.path.parent, stage, project))
        self._finalizer = weakref.finalize(self, _close_all, self._sinks)

    def write(self, step: int, **metrics: Any) -> None:
        if not self.primary:
            return
        record = {"stage": self.stage, "step": int(step), "time": round(time.time(), 3)}
        record.update(to_jsonable(dict(self._header, **metrics)))
        self._header = {}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = scalar_metrics(record)
        if scalars:
            series = series_of(record)
            for sink in self._sinks:
                sink.write(int(step), series, scalars)

    def rewind(self, step: int, **match: Any) -> None:
        """Drop the records after ``step`` (of the series whose fields equal ``match``): a run
        resumed from the checkpoint at ``step`` recomputes them. TensorBoard is told to hide its
        copies of those steps (a restart marker); W&B keeps what it was sent."""
        if not self.primary:
            return
        kept = [r for r in self.read()
                if not (r["step"] > step and all(r.get(k) == v for k, v in match.items()))]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)
        for sink in self._sinks:
            sink.rewind(int(step), {k: str(v) for k, v in match.items() if k in SERIES_FIELDS})

    def read(self) -> list[dict]:
        """The records, without a last line cut short by a kill mid-write (dropped on rewind)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def close(self) -> None:
        """Flush and close the TensorBoard files and finish the W&B runs (idempotent; a later
        ``write`` opens new ones)."""
        _close_all(self._sinks)

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scalar_metrics(record: dict) -> dict[str, float]:
    """The plottable numbers of a record: ``{tag: value}``, nested dicts joined with ``/``; the
    bookkeeping fields (stage, step, time), the series fields, lists, strings and booleans are
    left out."""
    out: dict[str, float] = {}

    def visit(tag: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{tag}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)

    for key, value in record.items():
        if key not in _NOT_METRICS and key not in SERIES_FIELDS:
            visit(str(key), value)
    return out


def series_of(record: dict) -> tuple[tuple[str, str], ...]:
    """The series a record belongs to: its ``SERIES_FIELDS`` that hold a name or a number."""
    return tuple((field, str(record[field])) for field in SERIES_FIELDS
                 if isinstance(record.get(field), (str, int))
                 and not isinstance(record[field], bool))


def series_name(series: tuple[tuple[str, str], ...]) -> str:
    """A series as a folder / run name: ``backbone=dinov2_vitb,dataset=cifar10``; '' for none."""
    text = ",".join(f"{field}={value}" for field, value in series)
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in text)


def _matches(series: tuple[tuple[str, str], ...], match: dict[str, str]) -> bool:
    fields = dict(series)
    return all(fields.get(key) == value for key, value in match.items())


def _close_all(sinks: list) -> None:
    for sink in sinks:
        sink.close()


def _tensorboard_writer():
    """tensorboard's TensorFlow-free event writer and protos, imported at the first event file
    (``ddjax --help`` and runs with ``DDJAX_TENSORBOARD=0`` never import them)."""
    if "tensorflow" not in sys.modules:
        # tensorboard's file I/O (``tensorboard.compat.tf``) resolves to TensorFlow when it is
        # installed and to tensorboard's own stub otherwise. This empty module is tensorboard's
        # switch for "use the stub" (its ``no_tensorflow`` build target), so writing an event
        # file never imports TensorFlow (seconds) into a JAX process. A process that already
        # imported TensorFlow keeps it.
        name = "tensorboard.compat.notf"
        sys.modules.setdefault(name, types.ModuleType(name))
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    return EventFileWriter, event_pb2, summary_pb2


class _EventFile:
    """One TensorBoard event file, written by tensorboard's own ``EventFileWriter`` (what
    ``torch.utils.tensorboard`` uses; it needs neither TensorFlow nor torch) and flushed after
    every record. ``purge_step`` starts the file as tensorboardX's ``purge_step`` does: a restart
    marker (``SessionLog.START`` at that step) after which TensorBoard's loader hides the run's
    earlier events at steps >= it."""

    def __init__(self, directory: Path, purge_step: int | None):
        EventFileWriter, self._event_pb2, self._summary_pb2 = _tensorboard_writer()
        # It starts a writer thread per file; ``flush`` waits until that thread wrote the record.
        self._writer = EventFileWriter(str(directory))
        if purge_step is not None:
            event_pb2 = self._event_pb2
            self._writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
            self._writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=purge_step,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
            self._writer.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        Value = self._summary_pb2.Summary.Value   # simple_value is a float32: 1e200 becomes inf
        summary = self._summary_pb2.Summary(
            value=[Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=step,
                                                     summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _TensorBoard:
    """A stage's TensorBoard runs: ``tensorboard/`` for its records, ``tensorboard/<series>/``
    for each series (``SERIES_FIELDS``). A rewind closes the matching files; the next file of
    such a series starts with a restart marker at the first redone step. TensorBoard reads a
    run's files in name order, ``events.out.tfevents.<seconds>.<host>.<pid>.<n>``: the marker's
    file comes after the steps it hides when it is opened in a later second (a resumed process)."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[tuple, _EventFile] = {}
        self.rewinds: list[tuple[int, dict]] = []   # (first redone step, series match)

    def write(self, step: int, series: tuple, scalars: dict[str, float]) -> None:
        if series not in self.files:
            purge = [first for first, match in self.rewinds if _matches(series, match)]
            name = series_name(series)
            self.files[series] = _EventFile(self.root / name if name else self.root,
                                            purge[-1] if purge else None)
        self.files[series].scalars(step, scalars)

    def rewind(self, step: int, match: dict[str, str]) -> None:
        self.rewinds.append((step + 1, match))
        for series in [s for s in self.files if _matches(s, match)]:
            self.files.pop(series).close()

    def close(self) -> None:
        while self.files:
            self.files.popitem()[1].close()


def _stdout_to_stderr():
    """W&B's banners go to stderr: stdout's last line stays the stage's JSON summary."""
    return contextlib.redirect_stdout(sys.stderr)


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise DdjaxError("DDJAX_WANDB_PROJECT is set but wandb is not installed; "
                         "pip install 'ddjax[wandb]' (or unset DDJAX_WANDB_PROJECT)") from None
    return wandb


class _WandB:
    """One W&B run per stage (and series), started at its first record: project
    ``DDJAX_WANDB_PROJECT``, entity ``DDJAX_WANDB_ENTITY`` (optional), grouped by workdir, with the
    stage's recorded config; its local files go to ``<stage dir>/wandb/``."""

    def __init__(self, directory: Path, stage: str, project: str):
        if importlib.util.find_spec("wandb") is None:
            _import_wandb()
        self.directory, self.stage, self.project = directory, stage, project
        self.runs: dict[tuple, Any] = {}
        self._registered = False

    def _config(self) -> dict:
        try:
            return json.loads((self.directory / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def write(self, step: int, series: tuple, scalars: dict[str, float]) -> None:
        if series not in self.runs:
            wandb = _import_wandb()
            workdir = self.directory.parent.name
            name = "/".join(p for p in (workdir, self.stage, series_name(series)) if p)
            try:
                with _stdout_to_stderr():
                    self.runs[series] = wandb.init(
                        project=self.project, entity=os.environ.get("DDJAX_WANDB_ENTITY") or None,
                        group=workdir, job_type=self.stage, name=name, dir=str(self.directory),
                        config=self._config(), reinit="create_new")
            except Exception as err:  # no login, no network, bad project: one line
                raise DdjaxError(f"W&B could not start a run ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); set "
                                 "WANDB_MODE=offline or unset DDJAX_WANDB_PROJECT") from err
            if not self._registered:   # after wandb's own exit hooks, so it runs before them
                atexit.register(self.close)
                self._registered = True
        self.runs[series].log(scalars, step=step)

    def rewind(self, step: int, match: dict[str, str]) -> None:
        # W&B steps only go forward within a run: a series rewound in this process gets a new run.
        for series in [s for s in self.runs if _matches(s, match)]:
            with _stdout_to_stderr():
                self.runs.pop(series).finish()

    def close(self) -> None:
        while self.runs:
            run = self.runs.popitem()[1]
            try:
                with _stdout_to_stderr():
                    run.finish()
            except Exception as err:  # at process exit W&B may have shut down first
                warn(f"W&B run {run.name} did not finish cleanly: {type(err).__name__}: {err}")


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
             desc: str = "") -> Iterator:
    """A tqdm bar with rate and ETA on stderr; ``initial`` makes a resumed run's ETA honest."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


def warn(message: str) -> None:
    """One warning line on stderr, printed above any progress bar."""
    tqdm.write(f"ddjax: warning: {message}", file=sys.stderr)


def print_summary(stage: str, workdir: str | Path, artifacts: dict[str, Any], **figures: Any) -> dict:
    """Print the stage's final one-line JSON summary on stdout and return it."""
    from ddjax import mesh

    summary = {"stage": stage, "workdir": str(workdir), "artifacts": to_jsonable(artifacts)}
    summary.update(to_jsonable(figures))
    if mesh.is_built():
        summary["mesh"] = mesh.describe()
    summary = strict_json(summary)
    print(json.dumps(summary, allow_nan=False), flush=True)
    return summary


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so the line is strict JSON."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
