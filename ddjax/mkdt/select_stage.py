"""``ddjax select high-loss`` / ``ddjax select random``: the real subsets MKDT starts from.

High-loss (mkdt.md §4.2): every example's KD loss (MSE averaged over the representation dims)
under each expert's epoch-1 parameters, averaged over the experts, sorted in decreasing order
(ties keep dataset order); the top p% are the initial synthetic set, so a smaller percentage is a
prefix of a larger one. Random: a seeded uniform subset of each size, the baseline.

Outputs in ``<workdir>/select/``: ``high_loss_<p>pct.npy`` / ``random_<p>pct.npy`` (int64
indices into the train split), ``high_loss_scores.npy`` (the averaged loss of every example) and
``selection.json`` describing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddjax.data.pipeline import load_split
from ddjax.data.subsets import random_subset
from ddjax.errors import DdjaxError
from ddjax.mkdt.student import load_targets, student_inputs, student_model
from ddjax.artifacts.trajectories import TrajectoryStore
from ddjax.mkdt.experts import per_example_mse
from ddjax.runlog import print_summary, progress
from ddjax.workdir import Stage

READS = ("seed", "data", "model", "experts", "select")


def subset_size(num_examples: int, percent: float) -> int:
    """``int(p% of N)``, as the reference sizes its subsets (2% of 50,000 = 1,000)."""
    size = int(percent * num_examples / 100)
    if not 0 < size <= num_examples:
        raise DdjaxError(f"select.percents entry {percent} gives {size} of {num_examples} examples; "
                         "use a percentage in (0, 100]")
    return size


def high_loss_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; equal scores keep dataset order."""
    return np.argsort(-np.asarray(scores), kind="stable")


def _save_indices(path: Path, indices: np.ndarray) -> None:
    """Write once; an existing file must hold the same indices (nothing is silently replaced)."""
    indices = np.asarray(indices, np.int64)
    if path.exists():
        if not np.array_equal(np.load(path), indices):
            raise DdjaxError(f"{path} exists with a different selection; move it away or use a new --workdir")
        return
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, indices)
    tmp.replace(path)


def _record(stage: Stage, entry: dict) -> None:
    path = stage.directory / "selection.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(entry)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def run_high_loss(stage: Stage) -> dict:
    cfg = stage.config
    store = TrajectoryStore.open(stage.sibling("experts") / "trajectories")
    if store.meta["loss"] != "mse":
        raise DdjaxError(f"high-loss selection scores KD (mse) experts; the store at {store.root} holds "
                         f"{store.meta['loss']!r} experts")
    experts = store.complete_experts()
    if not experts:
        raise DdjaxError(f"no complete expert in {store.root}; run `ddjax experts` first")
    images, labels, spec, _ = student_inputs(stage)
    store.check_compatible({"dataset": spec.name, "model": cfg.model.name})
    targets, num_outputs = load_targets(stage, labels)
    model = student_model(cfg, num_outputs, images.shape[1:3])
    scores_fn = per_example_mse(model.apply)
    total = np.zeros(images.shape[0], np.float64)
    for e in progress(experts, desc="scoring"):
        params = store.load_epoch(e, cfg.select.epoch)
        total += np.asarray(scores_fn(params, images, targets), np.float64)
    scores = total / len(experts)
    order = high_loss_order(scores)
    artifacts = {}
    for percent in cfg.select.percents:
        path = stage.directory / f"high_loss_{percent:g}pct.npy"
        _save_indices(path, order[:subset_size(len(order), percent)])
        artifacts[f"high_loss_{percent:g}pct"] = path
    np.save(stage.directory / "high_loss_scores.npy", scores)
    _record(stage, {"high_loss": {"experts": experts, "epoch": cfg.select.epoch,
                                  "percents": list(cfg.select.percents)}})
    return print_summary("select", stage.workdir, artifacts, method="high-loss", experts=len(experts),
                         mean_score=float(scores.mean()), top_score=float(scores[order[0]]))


def run_random(stage: Stage) -> dict:
    cfg = stage.config
    _, labels = load_split(cfg.data, "train")
    artifacts = {}
    for percent in cfg.select.percents:
        path = stage.directory / f"random_{percent:g}pct.npy"
        _save_indices(path, random_subset(len(labels), subset_size(len(labels), percent), cfg.seed))
        artifacts[f"random_{percent:g}pct"] = path
    _record(stage, {"random": {"seed": cfg.seed, "percents": list(cfg.select.percents)}})
    return print_summary("select", stage.workdir, artifacts, method="random")
