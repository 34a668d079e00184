"""Expert trajectories on disk: one Orbax pytree per (expert, epoch), plus the store's metadata.

Layout under ``root``::

    store.json                  what the experts are: dataset, model, loss, optimiser, epochs,
                                normalisation / ZCA digest, seed, parameter count
    expert_0007/epoch_000/      parameters at initialisation (an Orbax pytree)
    expert_0007/epoch_001/      ... after every kept epoch
    expert_0007/done.json       written last: the expert is complete (final loss etc.)

Distillation reads one expert's epochs ``s`` and ``s + M`` without touching the rest, and a
killed training run keeps every expert and epoch already written. Writes of one epoch are atomic
(Orbax renames a finished temporary directory), and rewriting an existing epoch is skipped:
training is deterministic, so a resumed run would write the same values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.errors import DdjaxError
from ddjax.runlog import write_json_atomic

STORE_FILE_NAME = "store.json"
_EXPERT_DIR = re.compile(r"expert_(\d{4,})$")

# Fields that must agree between a store and whoever reads or extends it.
IDENTITY_FIELDS = ("dataset", "model", "model_kwargs", "loss", "num_params", "normalisation")


class TrajectoryStore:
    """Per-expert, per-epoch parameter snapshots with metadata; see the module docstring."""

    def __init__(self, root: str | Path, meta: dict):
        self.root = Path(root)
        self.meta = meta

    @classmethod
    def create_or_open(cls, root: str | Path, meta: dict) -> "TrajectoryStore":
        """Open the store at ``root`` if its identity matches ``meta``, else create it."""
        root = Path(root)
        if (root / STORE_FILE_NAME).exists():
            store = cls.open(root)
            store.check_compatible(meta)
            return store
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / STORE_FILE_NAME, meta, sort_keys=True)
        return cls(root, meta)

    @classmethod
    def open(cls, root: str | Path) -> "TrajectoryStore":
        root = Path(root)
        path = root / STORE_FILE_NAME
        if not path.exists():
            raise DdjaxError(f"no expert store at {root} ({STORE_FILE_NAME} missing); run `ddjax experts` first")
        return cls(root, json.loads(path.read_text()))

    def check_compatible(self, expected: dict) -> None:
        """Raise if the store was written for another dataset, model, loss or normalisation."""
        wrong = [f"{k}: store has {self.meta.get(k)!r}, expected {expected.get(k)!r}"
                 for k in IDENTITY_FIELDS if k in expected and self.meta.get(k) != expected.get(k)]
        if wrong:
            raise DdjaxError(f"expert store {self.root} does not match this run ({'; '.join(wrong)}); "
                             "point at the right store or train new experts into another directory")

    def check_ssl(self, settings: dict | None) -> None:
        """Raise unless the store's Barlow Twins settings (``ssl``; None for KD/label experts)
        are ``settings``: the same loss with another lambda or other views is another objective."""
        if self.meta.get("ssl") != settings:
            raise DdjaxError(f"expert store {self.root} was trained with SSL settings {self.meta.get('ssl')} "
                             f"but this config's experts section gives {settings}; use the experts "
                             "settings the store was trained with, or train into another --workdir")

    def _epoch_dir(self, expert: int, epoch: int) -> Path:
        return self.root / f"expert_{expert:04d}" / f"epoch_{epoch:03d}"

    def has_epoch(self, expert: int, epoch: int) -> bool:
        return self._epoch_dir(expert, epoch).exists()

    def save_epoch(self, expert: int, epoch: int, params: Any) -> None:
        """Write one snapshot; an existing one is kept (a resumed run recomputes the same values)."""
        if not self.has_epoch(expert, epoch):
            save_pytree(self._epoch_dir(expert, epoch), params)

    def load_epoch(self, expert: int, epoch: int, template: Any | None = None) -> Any:
        if not self.has_epoch(expert, epoch):
            raise DdjaxError(f"expert store {self.root} has no epoch {epoch} of expert {expert}; "
                             f"it keeps epochs {self.meta.get('kept_epochs')} of complete experts "
                             f"{self.complete_experts()}")
        return load_pytree(self._epoch_dir(expert, epoch), template)

    def mark_complete(self, expert: int, summary: dict) -> None:
        write_json_atomic(self.root / f"expert_{expert:04d}" / "done.json", summary, sort_keys=True)

    def complete_experts(self) -> list[int]:
        """Indices of experts whose every kept epoch is written, ascending."""
        found = []
        for child in self.root.iterdir():
            match = _EXPERT_DIR.match(child.name)
            if match and (child / "done.json").exists():
                found.append(int(match.group(1)))
        return sorted(found)

    def expert_summary(self, expert: int) -> dict:
        return json.loads((self.root / f"expert_{expert:04d}" / "done.json").read_text())
