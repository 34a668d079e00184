"""The stage protocol: a stage runs in ``<workdir>/<stage>/``, alone, on the config fields it reads.

Opening a stage takes an OS lock on its directory (a second process exits at once, naming the
holder, before writing anything), records the config fields the stage declares in ``READS`` (a
rerun with other values is refused; other stages' settings never block it) and hands the stage a
config holding only those fields, so a field it did not declare cannot be read by mistake. Stages
find each other's outputs only through ``ddjax.artifacts``. See docs/design.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import ml_collections

from ddjax import mesh
from ddjax.config import CONFIG_FILE_NAME, record_config
from ddjax.errors import DdjaxError
from ddjax.runlog import MetricsLog

LOCK_FILE_NAME = ".lock"


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a stage's ``run`` function receives."""

    name: str
    config: ml_collections.ConfigDict
    workdir: Path

    @property
    def directory(self) -> Path:
        return self.workdir / self.name

    @functools.cached_property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.directory, self.name, primary=mesh.is_primary(),
                          header={"mesh": mesh.describe()})

    

def read_fields(config: ml_collections.ConfigDict, reads: tuple[str, ...],
                command: str = "this stage") -> ml_collections.ConfigDict:
    """A config with only the ``reads`` fields (``section`` or ``section.field``) of ``config``.

    A missing section is an error naming it; a missing field is left out (stages read optional
    fields with ``.get``)."""
    out = ml_collections.ConfigDict()
    for dotted in reads:
        head, *rest = dotted.split(".")
        if head not in config:
            raise DdjaxError(f"the config has no {head!r} section, which {command} reads; use a "
                             "config that has one, e.g. experiments/smoke.py (MKDT) or "
                             "experiments/smoke.py:lgm (LGM)")
        if not rest:
            out[head] = config[head]
            continue
        if rest[0] not in config[head]:
            continue
        if head not in out:
            out[head] = ml_collections.ConfigDict()
        out[head][rest[0]] = config[head][rest[0]]
    return out


@contextlib.contextmanager
def directory_lock(directory: Path, command: str) -> Iterator[None]:
    """Hold an exclusive OS lock on ``directory`` (released when the process ends, even by
    SIGKILL); a second holder gets one line naming the first."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE_NAME
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _holder(handle.read())
            raise DdjaxError(f"{directory} is in use by {holder}; wait for it to finish, or use "
                             "another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": command}) + "\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"`{info['command']}` (process {info['pid']} on {info['host']}, since {info['since']})"
    except (ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def open_stage(name: str, config: ml_collections.ConfigDict, workdir: str | Path,
               command: str, record: str = CONFIG_FILE_NAME) -> Iterator[Stage]:
    """Lock ``<workdir>/<name>``, record ``config`` (the fields the stage reads, from
    ``read_fields``) there as ``record``, and yield the stage. In a multi-process run the first
    process locks and records; the others wait for it."""
    stage = Stage(name, config, Path(workdir).absolute())
    recorded = stage.directory / record
    with contextlib.ExitStack() as held:
        fresh = False
        if mesh.is_primary():
            held.enter_context(directory_lock(stage.directory, command))
            fresh = not recorded.exists()
            record_config(stage.directory, config, record)
        mesh.barrier(f"open {stage.directory}")
        try:
            yield stage
        except DdjaxError:
            # Refused before writing anything (e.g. its inputs are missing or were made
            # differently): forget the settings too, so the corrected command is not refused.
            if fresh and {p.name for p in stage.directory.iterdir()} <= {LOCK_FILE_NAME, record}:
                recorded.unlink()
            raise
        finally:
            if "metrics" in stage.__dict__:  # opened: close its event files and W&B run
                stage.metrics.close()


def stage_reads(reads, command_word: str) -> tuple[tuple[str, ...], str]:
    """``(fields, record file)`` of a command: ``READS`` is one tuple for a one-command stage, or
    ``{word: fields}`` when several commands share a directory (``select high-loss|random``),
    each then recording its own fields in ``config.<word>.json``."""
    if isinstance(reads, dict):
        return tuple(reads[command_word]), f"config.{command_word}.json"
    return tuple(reads), CONFIG_FILE_NAME


def due(step: int, every: int, last: int) -> bool:
    """True every ``every`` steps and at the ``last`` one (checkpoints, saves, logs)."""
    return (every > 0 and step % every == 0) or step == last


def check_finite(value: float, what: str, advice: str) -> float:
    """``value`` if finite, else one line saying what diverged and which setting to change."""
    if not math.isfinite(float(value)):
        raise DdjaxError(f"{what} became {value}; {advice}")
    return value
