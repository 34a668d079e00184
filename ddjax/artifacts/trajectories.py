"""Expert trajectories on disk: the store, and each expert's parameters after every kept epoch.

The store (``experts/trajectories``) is an artifact whose meta says what the experts are
(dataset, model, loss, optimiser, normalisation, epochs, seed); each expert is a sub-artifact
``expert_NNNN`` whose epochs ``epoch_NNN`` are written one by one and which is complete once its
marker follows the last. Distillation reads two epochs of one expert without touching the rest,
and a killed run keeps every epoch already written. See docs/mkdt.md#experts.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ddjax import mesh
from ddjax.artifacts.base import Artifact, finish
from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.errors import DdjaxError

TRAJECTORIES = Artifact(
    "expert trajectories", "experts/trajectories", "ddjax experts",
    identity=("dataset", "train_subset", "model", "model_kwargs", "loss", "teacher_sha256",
              "num_params", "normalisation", "ssl", "standardize_targets"))
# Relative to the store: an expert's directory, holding epoch_NNN/ snapshots (Orbax pytrees).
EXPERT = Artifact("expert", "expert_{expert:04d}", "ddjax experts")
_EPOCH = "epoch_{epoch:03d}"
_EXPERT_NAME = re.compile(r"expert_(\d{4,})$")


class TrajectoryStore:
    """Per-expert, per-epoch parameter snapshots with the store's meta; see the module docstring."""

    def __init__(self, root: str | Path, meta: dict):
        self.root = Path(root)
        self.meta = meta

    @classmethod
    def create_or_open(cls, root: str | Path, meta: dict) -> "TrajectoryStore":
        """Open the store at ``root`` if its identity matches ``meta``, else create it."""
        root = Path(root)
        # Process 0's view decides: a peer that looked after process 0 created the store would
        # skip the barrier below and meet process 0 at the next one.
        if mesh.primary_says(TRAJECTORIES.is_complete(root)):
            store = cls.open(root)
            store.check_compatible(meta)
            return store
        if mesh.is_primary():
            root.mkdir(parents=True, exist_ok=True)
            meta = finish(root, TRAJECTORIES, meta)
        mesh.barrier(f"store {root}")
        return cls.open(root)

    @classmethod
    def open(cls, root: str | Path) -> "TrajectoryStore":
        return cls(root, TRAJECTORIES.read_meta(root))

    def check_compatible(self, expected: dict) -> None:
        """Raise unless the store's identity fields (dataset, model, loss, normalisation, the
        Barlow Twins settings ``ssl``, ...) present in ``expected`` equal those of ``expected``."""
        TRAJECTORIES.check(self.meta, expected, self.root)

    def _expert_dir(self, expert: int) -> Path:
        return EXPERT.locate(self.root, expert=expert)

    def _epoch_dir(self, expert: int, epoch: int) -> Path:
        return self._expert_dir(expert) / _EPOCH.format(epoch=epoch)

    def has_epoch(self, expert: int, epoch: int) -> bool:
        return self._epoch_dir(expert, epoch).exists()

    def save_epoch(self, expert: int, epoch: int, params: Any) -> None:
        """Write one snapshot; an existing one is kept (a resumed run recomputes the same values).
        Every process of a run calls it; process 0 writes."""
        if mesh.is_primary() and not self.has_epoch(expert, epoch):
            save_pytree(self._epoch_dir(expert, epoch), params)

    def load_epoch(self, expert: int, epoch: int, template: Any | None = None) -> Any:
        if not self.has_epoch(expert, epoch):
            raise DdjaxError(f"expert store {self.root} has no epoch {epoch} of expert {expert}; "
                             f"it keeps epochs {self.meta.get('kept_epochs')} of complete experts "
                             f"{self.complete_experts()}")
        return load_pytree(self._epoch_dir(expert, epoch), template)

    def mark_complete(self, expert: int, summary: dict) -> None:
        """Declare an expert complete (its every kept epoch written); ``summary`` is its meta."""
        if mesh.is_primary():
            finish(self._expert_dir(expert), EXPERT, summary)
        mesh.barrier(f"expert {self._expert_dir(expert)}")

    def complete_experts(self) -> list[int]:
        """Indices of the complete experts, ascending."""
        matches = (_EXPERT_NAME.match(p.name) for p in EXPERT.complete_under(self.root, "expert_*"))
        return sorted(int(m.group(1)) for m in matches if m)

    def expert_summary(self, expert: int) -> dict:
        return EXPERT.read_meta(self._expert_dir(expert))


class EpochCache:
    """An expert's epochs read once and kept in host memory, the least recently used dropped
    beyond ``max_bytes``: distillation revisits the same few epochs of every expert, and a read
    from disk per iteration would stall the device (docs/scaling.md#host-overhead)."""

    def __init__(self, store: TrajectoryStore, max_bytes: int):
        self.store, self.max_bytes, self.bytes = store, max_bytes, 0
        self._kept: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def get(self, expert: int, epoch: int) -> Any:
        key = (expert, epoch)
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        params = jax.tree.map(np.asarray, self.store.load_epoch(expert, epoch))
        self._kept[key] = params
        self.bytes += sum(leaf.nbytes for leaf in jax.tree.leaves(params))
        while self.bytes > self.max_bytes and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self.bytes -= sum(leaf.nbytes for leaf in jax.tree.leaves(dropped))
        return params
