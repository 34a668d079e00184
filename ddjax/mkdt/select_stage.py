"""``ddjax select high-loss`` / ``ddjax select random``: the real subsets MKDT starts from.

High-loss: every example's KD loss under each expert's epoch-1 parameters, averaged over the
experts; the top p% by decreasing score (ties keep dataset order), so a smaller selection is a
prefix of a larger one. Random: a seeded uniform subset of each size, the baseline.
See docs/mkdt.md#high-loss-selection.
"""

from __future__ import annotations

import numpy as np

from ddjax.artifacts.selection import SELECTION, write_selection
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.data.pipeline import dataset_spec, load_split
from ddjax.data.subsets import random_subset
from ddjax.errors import DdjaxError
from ddjax.mkdt import objectives
from ddjax.mkdt.experts import per_example_mse
from ddjax.mkdt.student import load_representations, store_identity, student_inputs, student_model
from ddjax.runlog import print_summary, progress
from ddjax.workdir import Stage

# The two commands share the directory; each records what it reads (config.<word>.json).
READS = {"high-loss": ("seed", "data", "model", "experts.representations",
                       "experts.standardize_targets", "experts.zca", "select"),
         "random": ("seed", "data", "select")}


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


def _identity(cfg, method: str, percent: float, dataset: str) -> dict:
    return {"method": method, "percent": percent, "dataset": dataset,
            "train_subset": int(cfg.data.get("train_subset", 0))}


def run_high_loss(stage: Stage) -> dict:
    cfg = stage.config
    store = TrajectoryStore.open(TRAJECTORIES.locate(stage.workdir))
    if objectives.by_expert_loss(store.meta["loss"]).targets != "representations":
        raise DdjaxError(f"high-loss selection scores KD (mse) experts; the store at {store.root} holds "
                         f"{store.meta['loss']!r} experts")
    experts = store.complete_experts()
    if not experts:
        raise DdjaxError(f"no complete expert in {store.root}; run `ddjax experts` first")
    images, labels, spec, zca = student_inputs(cfg, stage.workdir)
    store.check_compatible(store_identity(cfg, stage.workdir, spec, zca, "mse"))
    targets = load_representations(cfg, stage.workdir, spec, len(labels))
    model = student_model(cfg, targets.shape[1], images.shape[1:3])
    scores_fn = per_example_mse(model.apply)
    total = np.zeros(images.shape[0], np.float64)
    for e in progress(experts, desc="scoring"):
        params = store.load_epoch(e, cfg.select.epoch)
        total += np.asarray(scores_fn(params, images, targets), np.float64)
    scores = total / len(experts)
    order = high_loss_order(scores)
    artifacts = {}
    for percent in cfg.select.percents:
        directory = SELECTION.locate(stage.workdir, method="high_loss", percent=percent)
        meta = dict(_identity(cfg, "high_loss", percent, spec.name), epoch=cfg.select.epoch,
                    experts=experts)
        write_selection(directory, order[:subset_size(len(order), percent)], meta, scores=scores)
        artifacts[directory.name] = directory
    return print_summary("select", stage.workdir, artifacts, method="high-loss", experts=len(experts),
                         mean_score=float(scores.mean()), top_score=float(scores[order[0]]))


def run_random(stage: Stage) -> dict:
    cfg = stage.config
    _, labels = load_split(cfg.data, "train")
    dataset = dataset_spec(cfg.data).name
    artifacts = {}
    for percent in cfg.select.percents:
        directory = SELECTION.locate(stage.workdir, method="random", percent=percent)
        indices = random_subset(len(labels), subset_size(len(labels), percent), cfg.seed)
        write_selection(directory, indices, dict(_identity(cfg, "random", percent, dataset),
                                                 seed=cfg.seed))
        artifacts[directory.name] = directory
    return print_summary("select", stage.workdir, artifacts, method="random")
