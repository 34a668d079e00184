"""A stage run: its directory inside the pipeline workdir, its recorded config, its metrics.

``<workdir>/<stage>/`` holds a stage's artifacts, checkpoints, ``config.json`` and
``metrics.jsonl``; later stages find earlier stages' artifacts under the same workdir. Only the
config sections a stage depends on are recorded for it, so changing, say, the distillation
settings does not block rerunning (resuming) the expert stage of the same pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ml_collections

from ddjax.config import record_config
from ddjax.runlog import MetricsLog


@dataclass(frozen=True)
class Stage:
    """What a stage's ``run`` function receives."""

    name: str
    config: ml_collections.ConfigDict
    workdir: Path

    @property
    def directory(self) -> Path:
        return self.workdir / self.name

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.directory, self.name)

    def sibling(self, name: str) -> Path:
        """Another stage's directory in the same workdir."""
        return self.workdir / name


def open_stage(name: str, config: ml_collections.ConfigDict, workdir: str | Path,
               sections: tuple[str, ...]) -> Stage:
    """Create ``<workdir>/<name>`` and record (or check, on a rerun) the sections it uses."""
    stage = Stage(name, config, Path(workdir).absolute())
    used = ml_collections.ConfigDict({key: config[key] for key in sections if key in config})
    record_config(stage.directory, used)
    return stage
