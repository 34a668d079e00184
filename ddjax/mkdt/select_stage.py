"""``ddjax select high-loss`` / ``ddjax select random``: the real subsets MKDT starts from.

High-loss: every example's KD loss under each expert's epoch-1 parameters, averaged over the
experts; the top p% by decreasing score (ties keep dataset order), so a smaller selection is a
prefix of a larger one. Random: a seeded uniform subset of each size, the baseline.
See docs/mkdt.md#high-loss-selection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddjax import mesh
from ddjax.artifacts.selection import SELECTION, write_selection
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.data.subsets import random_subset
from ddjax.errors import DdjaxError
from ddjax.mkdt import objectives
from ddjax.mkdt.student import (StudentRows, load_representations, store_identity, student_model,
                                student_rows)
from ddjax.runlog import print_summary
from ddjax.ssl.encode import map_rows
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


def mean_expert_scores(apply_fn, params_E, rows: StudentRows, batch_size: int = 1000) -> np.ndarray:
    """Every row's KD loss (MSE to its target, mean over output dims) under each expert of
    ``params_E`` (stacked), averaged over the experts, in float64. One pass over the rows in
    batches of ``batch_size`` (each process reads only its rows of a batch, the batch split over
    the data axis); the experts one after another on each batch, so memory is one expert's."""

    def batch_scores(params_E, batch):
        images, targets = batch
        mse = lambda p: jnp.mean((apply_fn({"params": p}, images) - targets) ** 2, axis=-1)  # noqa: E731
        return jax.lax.map(mse, params_E).T  # [B, E]

    scores_fn = jax.jit(batch_scores, out_shardings=mesh.replicated())
    params_E, n = mesh.replicate(params_E), len(rows)
    per_expert = map_rows(lambda batch: scores_fn(params_E, batch), rows, np.arange(n),
                          mesh.divisible_batch(min(batch_size, n)), desc="scoring")
    return per_expert.astype(np.float64).mean(axis=1)


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
    rows = student_rows(cfg, stage.workdir)
    store.check_compatible(store_identity(cfg, stage.workdir, rows.spec, rows.zca, "mse"))
    targets = load_representations(cfg, stage.workdir, rows.spec, len(rows))
    model = student_model(cfg, targets.shape[1], rows.image_size)
    params_E = jax.tree.map(lambda *leaves: np.stack(leaves),
                            *(store.load_epoch(e, cfg.select.epoch) for e in experts))
    scores = mean_expert_scores(model.apply, params_E, rows.with_targets(targets))
    order = high_loss_order(scores)
    artifacts = {}
    for percent in cfg.select.percents:
        directory = SELECTION.locate(stage.workdir, method="high_loss", percent=percent)
        meta = dict(_identity(cfg, "high_loss", percent, rows.spec.name), epoch=cfg.select.epoch,
                    experts=experts)
        write_selection(directory, order[:subset_size(len(order), percent)], meta, scores=scores)
        artifacts[directory.name] = directory
    return print_summary("select", stage.workdir, artifacts, method="high-loss", experts=len(experts),
                         mean_score=float(scores.mean()), top_score=float(scores[order[0]]))


def run_random(stage: Stage) -> dict:
    cfg = stage.config
    num_examples = len(open_rows(cfg.data, "train"))
    dataset = dataset_spec(cfg.data).name
    artifacts = {}
    for percent in cfg.select.percents:
        directory = SELECTION.locate(stage.workdir, method="random", percent=percent)
        indices = random_subset(num_examples, subset_size(num_examples, percent), cfg.seed)
        write_selection(directory, indices, dict(_identity(cfg, "random", percent, dataset),
                                                 seed=cfg.seed))
        artifacts[directory.name] = directory
    return print_summary("select", stage.workdir, artifacts, method="random")
