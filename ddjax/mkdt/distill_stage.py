"""``ddjax distill mkdt``: learn synthetic images, their targets and the inner lr by matching
expert trajectories, resumable at any iteration.

Each outer iteration picks the next expert of a reshuffled cycle and a start epoch, unrolls
``syn_steps`` student steps from its parameters on synthetic minibatches and moves the learnables
by the gradient of the normalised distance to the expert's later parameters. ``distill.mode``
selects the objective (``ddjax.mkdt.objectives``: MKDT, classic MTT, MTT-SSL). Sets are saved
after 0, every ``save_every`` and the last update. See docs/mkdt.md#trajectory-matching.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.artifacts.selection import METHODS, selection_indices
from ddjax.artifacts.synset import GRID, SYNSET, write_synset
from ddjax import mesh
from ddjax.artifacts.trajectories import TRAJECTORIES, EpochCache, TrajectoryStore
from ddjax.checkpoint import RunCheckpointer, numpy_rng_from_state, numpy_rng_state
from ddjax.data.transforms import denormalize, zca_digest, zca_unwhiten
from ddjax.errors import DdjaxError
from ddjax.mkdt import objectives, stability
from ddjax.mkdt.mtt import make_meta_loss, make_outer_step, outer_optimizer
from ddjax.mkdt.sampling import ExpertCycle, SyntheticBatches
from ddjax.mkdt.student import (data_identity, load_representations, store_identity, student_model,
                                student_rows)
from ddjax.models import has_batch_stats
from ddjax.runlog import print_summary, progress, warn
from ddjax.workdir import Stage, check_finite, due

READS = ("seed", "data", "model", "experts.representations", "experts.standardize_targets",
         "experts.zca", "experts.ssl_lambda",
         "experts.dsa_strategy", "experts.ssl_dsa_mode", "distill")


def init_indices(config, workdir: Path) -> np.ndarray:
    """The real images the synthetic set starts from: a selection or an .npy file of indices."""
    d = config.distill
    if d.init in METHODS:
        indices, source = selection_indices(workdir, d.init, d.percent, data_identity(config))
    else:
        source = Path(d.init)
        if not source.exists():
            raise DdjaxError(f"initial indices {source} do not exist; set distill.init to "
                             f"{' or '.join(METHODS)} or an existing .npy of indices")
        indices = np.load(source)
    if d.num_syn and len(indices) != d.num_syn:
        raise DdjaxError(f"distill.num_syn is {d.num_syn} but {source} holds {len(indices)} indices; "
                         "set distill.num_syn to 0 (take the file's size) or pick the matching percent")
    return indices


def _check_store(store: TrajectoryStore, config, workdir, objective, spec, zca) -> list[int]:
    d = config.distill
    if store.meta.get("loss") != objective.expert_loss:
        raise DdjaxError(f"distill.mode={d.mode!r} matches experts trained with "
                         f"experts.loss={objective.expert_loss!r}, but the store at {store.root} holds "
                         f"{store.meta.get('loss')!r} experts; train matching experts in another "
                         "--workdir or pick the mode of these")
    store.check_compatible(dict(store_identity(config, workdir, spec, zca, objective.expert_loss),
                                ssl=objective.identity(config.experts)))
    needed = d.max_start_epoch - 1 + d.expert_epochs
    if needed not in store.meta["kept_epochs"]:
        raise DdjaxError(f"distillation reads expert epochs up to {needed} but the store keeps "
                         f"{store.meta['kept_epochs']}; train experts with more epochs kept")
    experts = store.complete_experts()
    if not experts:
        raise DdjaxError(f"no complete expert in {store.root}; run `ddjax experts` first")
    return experts


EXPERT_CACHE_BYTES = 2 << 30  # host memory for expert epochs (each read from disk once)


class Plan(NamedTuple):
    """One outer iteration's draws and inputs, placed on the mesh, and the samplers' state after
    the draws (what the checkpoint after this iteration records)."""

    picks: list
    idx: jax.Array
    mask: jax.Array
    starts: Any
    targets: Any
    after: dict


def _planner(d, cache: EpochCache, rng, cycle: ExpertCycle, batches: SyntheticBatches,
             shard_experts: bool):
    """``next_plan()``: draw the next iteration's experts, start epochs and minibatches (the
    reference's order) and place their arrays. Called while the device runs the current step, so
    reading expert epochs and the host-to-device copies overlap with it."""
    place = mesh.shard if shard_experts else mesh.replicate
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)

    def next_plan() -> Plan:
        picks = [(cycle.next(rng), int(rng.integers(0, d.max_start_epoch)))
                 for _ in range(d.experts_per_step)]
        idx, mask = zip(*[batches.next_steps(d.syn_steps, rng) for _ in picks])
        after = copy.deepcopy({"rng": numpy_rng_state(rng), "cycle": cycle.state(),
                               "batches": batches.state()})  # the samplers go on changing theirs
        starts = stack([cache.get(e, s) for e, s in picks])
        targets = stack([cache.get(e, s + d.expert_epochs) for e, s in picks])
        return Plan(picks, *place((np.stack(idx), np.stack(mask), starts, targets)), after)

    return next_plan


def make_iteration_stats():
    """Jitted figures of one update, fetched in one transfer: the guards' inputs and the logged
    gradient norms and image change."""

    @jax.jit
    def stats(syn, new_syn, grads, init_images):
        return {"lr": syn["lr"], "new_lr": new_syn["lr"],
                "image_abs": jnp.max(jnp.abs(new_syn["images"])),
                "targets_finite": jnp.isfinite(new_syn["targets"]).all() if "targets" in new_syn
                else jnp.asarray(True),
                "grad_norm": {k: jnp.sqrt(jnp.sum(g ** 2)) for k, g in grads.items()},
                "image_change": jnp.sqrt(jnp.sum((new_syn["images"] - init_images) ** 2)
                                         / jnp.sum(init_images ** 2))}

    return stats


def _kept(checkpoint: int | None) -> str:
    where = (f"the checkpoint of iteration {checkpoint}" if checkpoint is not None
             else "no checkpoint yet")
    return f"{where} and the sets saved so far are kept"


def check_divergence(d, iteration: int, loss: float, stats: dict, checkpoint: int | None) -> None:
    """One line naming the setting to change when update ``iteration`` diverged: a non-finite
    matching loss (the inner unroll at the current lr), a learned lr outside
    ``(0, max_lr_ratio * lr_init]``, synthetic images beyond ``max_image_abs`` or non-finite
    targets (``stats`` from ``make_iteration_stats``, on the host). Raised before anything of that
    update is written; the settings are recorded, so the advice is a rerun in a new --workdir."""
    kept = _kept(checkpoint)
    lr, new_lr, image_abs, targets_ok = (float(stats[k]) for k in
                                         ("lr", "new_lr", "image_abs", "targets_finite"))
    check_finite(loss, f"the matching loss at iteration {iteration} (inner lr {lr:.4g})",
                 f"the student's unroll diverged: rerun in a new --workdir with a lower "
                 f"distill.lr_init ({d.lr_init:g}) or fewer distill.syn_steps ({d.syn_steps}); {kept}")
    bound = d.max_lr_ratio * d.lr_init
    if not 0 < new_lr <= bound:  # also NaN
        raise DdjaxError(f"the learned inner lr became {new_lr:.4g} at iteration {iteration} (outside "
                         f"(0, {bound:g}] = (0, distill.max_lr_ratio x distill.lr_init]); rerun in a "
                         f"new --workdir with a lower distill.lr_lr ({d.lr_lr:g}); {kept}")
    if not image_abs <= d.max_image_abs:  # also NaN
        raise DdjaxError(f"the synthetic images reached |x| = {image_abs:.3g} at iteration {iteration} "
                         f"(limit distill.max_image_abs = {d.max_image_abs:g}); rerun in a new "
                         f"--workdir with a lower distill.lr_images ({d.lr_images:g}); {kept}")
    if not targets_ok:
        raise DdjaxError(f"the learned targets became non-finite at iteration {iteration}; rerun in a "
                         f"new --workdir with a lower distill.lr_targets ({d.lr_targets:g}); {kept}")


def _stability(monitor, syn, plan: Plan, aug_keys, key, iteration: int,
               targets_standardized: bool) -> dict:
    """The stability diagnostics of the first picked expert's unroll, for the metrics record;
    a one-line warning when the exact meta-gradient cannot be trusted."""
    found = {k: float(v) for k, v in mesh.fetch(monitor(
        syn, jax.tree.map(lambda a: a[0], plan.starts), plan.idx[0], plan.mask[0], key,
        aug_key=aug_keys[0])).items()}
    lr = float(syn["lr"])
    ok, message = stability.diagnose(lr, found["lambda_max_start"], found["lambda_max_end"],
                                     found["lr_growth"], targets_standardized=targets_standardized)
    if not ok:
        warn(f"distill iteration {iteration + 1}: {message}")
    return dict(found, lr_lambda_max_start=lr * found["lambda_max_start"],
                lr_lambda_max_end=lr * found["lambda_max_end"])


def check_config(config) -> None:
    """Reject impossible distillation settings before the CLI records them."""
    d = config.distill
    objective = objectives.by_mode(d.mode)
    if min(d.max_start_epoch, d.syn_steps, d.experts_per_step, d.batch_syn, d.expert_epochs,
           d.checkpoint_every, d.save_every) < 1 or d.iterations < 0:
        raise DdjaxError("distill.max_start_epoch, syn_steps, experts_per_step, batch_syn, expert_epochs, "
                         "checkpoint_every and save_every must be >= 1, iterations >= 0")
    if objective.ssl_views and d.dsa:
        raise DdjaxError(f"distill.mode={d.mode!r} augments every inner minibatch with the experts' two "
                         "DSA views already; leave distill.dsa False")
    if d.inner_dtype not in ("float32", "bfloat16", "float16"):
        raise DdjaxError(f"distill.inner_dtype must be float32, bfloat16 or float16, got {d.inner_dtype!r}")
    if d.init not in METHODS and not str(d.init).endswith(".npy"):
        raise DdjaxError(f"distill.init must be {' or '.join(METHODS)} (a selection) or the path of "
                         f"an .npy file of train indices, got {d.init!r}")
    if not 0 <= d.backprop_steps <= d.syn_steps:
        raise DdjaxError(f"distill.backprop_steps must be in 0..syn_steps ({d.syn_steps}; 0: the "
                         f"whole unroll), got {d.backprop_steps}")
    if not (math.isfinite(d.lr_init) and d.lr_init > 0):
        raise DdjaxError(f"distill.lr_init must be a positive number, got {d.lr_init}")
    if d.stability_every < 0 or d.stability_iterations < 1 or not d.max_image_abs > 0 \
            or not d.max_lr_ratio > 1:
        raise DdjaxError("distill.stability_every must be >= 0, stability_iterations >= 1, "
                         "max_image_abs > 0 and max_lr_ratio > 1")


def run(stage: Stage) -> dict:
    cfg, d = stage.config, stage.config.distill
    objective = objectives.by_mode(d.mode)
    rows = student_rows(cfg, stage.workdir)  # only the initial set's rows are read
    spec, zca = rows.spec, rows.zca
    indices = init_indices(cfg, stage.workdir)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(rows):
        raise DdjaxError(f"distill.init {cfg.distill.init!r} gives {len(indices)} indices, not a "
                         f"non-empty list of rows of the {len(rows)} train images; pick indices of "
                         "this dataset and data.train_subset")
    store = TrajectoryStore.open(TRAJECTORIES.locate(stage.workdir))
    experts = _check_store(store, cfg, stage.workdir, objective, spec, zca)
    num_outputs, ssl = store.meta["num_outputs"], store.meta.get("ssl")
    (start_images, _), labels = rows.read(indices)
    start_targets = objective.synthetic_targets(
        labels, lambda: load_representations(cfg, stage.workdir, spec, len(rows))[indices],
        num_outputs)
    image_size = start_images.shape[1:3]
    model = student_model(cfg, num_outputs, image_size)
    if has_batch_stats(model, image_size):
        raise DdjaxError("distillation needs a student without BatchNorm (padded synthetic batches)")

    # Layout (docs/scaling.md): the learnables are replicated; the experts matched per step are
    # split over the data axis when their count divides it, else each inner minibatch is.
    shard_experts = d.experts_per_step > 1 and mesh.splits(d.experts_per_step)
    syn = {"images": start_images, "lr": np.asarray(d.lr_init, np.float32)}
    if start_targets is not None:
        syn["targets"] = start_targets
    syn = mesh.replicate(syn)
    init_images = syn["images"]
    optimizer = outer_optimizer(d.lr_images, d.lr_targets if objective.learns_targets else 0.0,
                                d.lr_lr, clip_norm=d.clip_grad_norm)
    opt_state = mesh.replicate(optimizer.init(syn))
    inner_dtype = None if d.inner_dtype == "float32" else jnp.dtype(d.inner_dtype)
    inner_loss, augment = objective.inner_objective(model.apply, d, ssl)
    constrain = None if shard_experts else mesh.constrain_batch
    meta_loss = make_meta_loss(inner_loss, remat=d.remat, inner_dtype=inner_dtype, augment=augment,
                               constrain=constrain, backprop_steps=d.backprop_steps)
    step_fn, stats_fn = make_outer_step(meta_loss, optimizer), make_iteration_stats()
    aug_base = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    monitor_key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    monitor = jax.jit(functools.partial(stability.unroll_stability, inner_loss,
                                        iterations=d.stability_iterations, augment=augment,
                                        inner_dtype=inner_dtype))

    rng = np.random.default_rng(cfg.seed)
    cycle, batches = ExpertCycle(experts), SyntheticBatches(len(indices), d.batch_syn)
    iteration = 0
    with RunCheckpointer(stage.directory / "resume") as resume:
        restored = resume.restore_latest({"syn": syn, "opt": opt_state})
        if restored is not None:
            state, meta = restored
            syn, opt_state, iteration = state["syn"], state["opt"], meta["iteration"]
            rng = numpy_rng_from_state(meta["rng"])
            cycle = ExpertCycle(experts, **meta["cycle"])
            batches = SyntheticBatches(len(indices), d.batch_syn, **meta["batches"])
        stage.metrics.rewind(iteration)
        next_plan = _planner(d, EpochCache(store, EXPERT_CACHE_BYTES), rng, cycle, batches,
                             shard_experts)

        def save_synset(k):
            host = mesh.fetch(syn)
            pixels = host["images"] if zca is None else zca_unwhiten(host["images"], zca)
            write_synset(SYNSET.locate(stage.workdir, iteration=k), host["images"],
                         denormalize(np.asarray(pixels), spec.mean, spec.std),
                         host["targets"] if "targets" in host else labels, host["lr"], {
                             "dataset": spec.name, "mean": list(spec.mean), "std": list(spec.std),
                             "zca": zca_digest(zca) if zca is not None else None, "iteration": k,
                             "mode": d.mode, "model": cfg.model.name, "model_kwargs": cfg.model.to_dict(),
                             "num_outputs": num_outputs, "ssl": ssl, "init": d.init,
                             "init_indices": np.asarray(indices).tolist(), "lr": float(host["lr"])})

        # The set of the current state, unless already saved: the start, or a resumed run whose
        # checkpoint was followed by a kill before that iteration's set was complete.
        if iteration == 0 or due(iteration, d.save_every, d.iterations):
            save_synset(iteration)
        loss = None
        plan = next_plan() if iteration < d.iterations else None
        with progress(total=d.iterations, initial=iteration, desc="distill") as bar:
            while iteration < d.iterations:
                aug_keys = mesh.replicate(jax.random.split(jax.random.fold_in(aug_base, iteration),
                                                           len(plan.picks)))
                checks = {}
                if d.stability_every and iteration % d.stability_every == 0:
                    checks = _stability(monitor, syn, plan, aug_keys,
                                        jax.random.fold_in(monitor_key, iteration), iteration,
                                        cfg.experts.standardize_targets)
                new_syn, new_opt, loss, grads = step_fn(syn, opt_state, plan.starts, plan.targets,
                                                        plan.idx, plan.mask, aug_keys)
                stats = stats_fn(syn, new_syn, grads, init_images)
                done, plan = plan, next_plan() if iteration + 1 < d.iterations else None
                loss, stats = mesh.fetch((loss, stats))  # the one wait for the device
                loss = float(loss)
                check_divergence(d, iteration + 1, loss, stats, resume.latest_step())
                syn, opt_state, iteration = new_syn, new_opt, iteration + 1
                stage.metrics.write(
                    iteration, loss=loss, lr=stats["new_lr"], **checks,
                    experts=[p[0] for p in done.picks], start_epochs=[p[1] for p in done.picks],
                    grad_norm=stats["grad_norm"], image_change=stats["image_change"])
                if due(iteration, d.checkpoint_every, d.iterations):
                    resume.save(iteration, {"syn": syn, "opt": opt_state},
                                dict(done.after, iteration=iteration))
                if due(iteration, d.save_every, d.iterations):
                    save_synset(iteration)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{float(stats['new_lr']):.4g}")
    final = SYNSET.locate(stage.workdir, iteration=iteration)
    return print_summary("distill", stage.workdir, {"synset": final, "grid": final / GRID},
                         mode=d.mode, iterations=iteration, num_syn=len(indices), loss=loss,
                         lr=float(mesh.fetch(syn["lr"])))
