"""What a run tells its user: a progress bar with ETA, JSON-lines metrics, a one-line summary.

Every stage writes ``metrics.jsonl`` in its directory (one JSON object per logged step, appended;
a resumed run first rewinds the file to its checkpoint, so no step appears twice) and ends by printing one JSON line naming the stage,
its directory, its artifacts and its key figures, which scripts can parse.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

METRICS_FILE_NAME = "metrics.jsonl"


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
    """Appends one JSON object per call to ``<directory>/metrics.jsonl``."""

    def __init__(self, directory: str | Path, stage: str):
        self.path = Path(directory) / METRICS_FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage = stage

    def write(self, step: int, **metrics: Any) -> None:
        record = {"stage": self.stage, "step": int(step), "time": round(time.time(), 3)}
        record.update(to_jsonable(metrics))
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewind(self, step: int, **match: Any) -> None:
        """Drop the records after ``step`` (of the series whose fields equal ``match``): a run
        resumed from the checkpoint at ``step`` recomputes them."""
        kept = [r for r in self.read()
                if not (r["step"] > step and all(r.get(k) == v for k, v in match.items()))]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

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
    summary = {"stage": stage, "workdir": str(workdir), "artifacts": to_jsonable(artifacts)}
    summary.update(to_jsonable(figures))
    print(json.dumps(summary), flush=True)
    return summary
