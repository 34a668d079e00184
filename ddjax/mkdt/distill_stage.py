"""``ddjax distill mkdt``: learn synthetic images, their targets and the inner lr by matching
expert trajectories (mkdt.md §4), resumable at any iteration.

Each outer iteration picks the next expert of a reshuffled cycle and a start epoch
``s ~ U{0..max_start_epoch−1}``, unrolls ``syn_steps`` student steps from ``θ_s`` on synthetic
minibatches and moves images, targets and lr by the gradient of the normalised distance to
``θ_{s+expert_epochs}``. ``distill.mode = 'mtt'`` is classic supervised MTT (cross-entropy to
fixed labels, experts trained with ``experts.loss = 'ce'``; ``distill.dsa`` augments every inner
minibatch with DSA as MTT does, ``experts.zca`` whitens as its option); ``experts_per_step > 1`` matches
several experts per step and averages their meta-gradients (an option; the reference uses 1).

``distill.mode = 'mtt_ssl'`` is the naive MTT-SSL baseline of MKDT's Appendix F (no reference code;
the paper reports that it fails: the matching loss barely decreases and the images barely move).
The experts are trained with ``experts.loss = 'barlow_twins'``; each inner step trains the student
with the same Barlow Twins loss on two fresh DSA views of its synthetic minibatch (the experts'
augmentation and lambda, read from the store), differentiated through. Images and the lr are
learned; there are no targets (the saved set's ``targets`` are the class labels of the real
images it started from, for reference only; ``synset.json`` has ``mode`` and the experts' ``ssl``
settings, which an evaluation must use to pre-train on it). The initial set comes
from ``distill.init`` as in the other modes; ``select high-loss`` scores KD experts only, so use
``random`` (``ddjax select random``) or a path.

Artifacts: ``<workdir>/distill/synsets/iter_NNNNNN/`` after NNNNNN updates (0, every
``save_every``, and the last). The reference's ``images_5000.pt`` holds the state after 4999
updates; ours is named by the updates it has seen.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.checkpoint import RunCheckpointer, numpy_rng_from_state, numpy_rng_state
from ddjax.data.transforms import denormalize, zca_digest, zca_unwhiten
from ddjax.mkdt.mtt import (make_meta_loss, make_outer_step, masked_barlow_twins,
                               masked_cross_entropy, masked_mse, outer_optimizer)
from ddjax.mkdt.sampling import ExpertCycle, SyntheticBatches
from ddjax.artifacts.synset import write_synset
from ddjax.errors import DdjaxError
from ddjax.mkdt.student import load_targets, student_inputs, student_model
from ddjax.mkdt.experts_stage import dsa_augment_fn, ssl_settings, ssl_views_fn
from ddjax.artifacts.trajectories import TrajectoryStore
from ddjax.models import has_batch_stats
from ddjax.runlog import print_summary, progress
from ddjax.workdir import Stage

READS = ("seed", "data", "model", "experts", "select", "distill")
# The expert loss each mode matches: its experts must have been trained with it.
_MODES = {"mkdt": "mse", "mtt": "ce", "mtt_ssl": "barlow_twins"}


def init_indices(stage: Stage) -> np.ndarray:
    """The real images the synthetic set starts from: a ``select`` output or an .npy path."""
    d = stage.config.distill
    if d.init in ("high_loss", "random"):
        path = stage.sibling("select") / f"{d.init}_{d.percent:g}pct.npy"
        hint = f"run `ddjax select {d.init.replace('_', '-')}` with select.percents including {d.percent:g}"
    else:
        path, hint = Path(d.init), "set distill.init to high_loss, random or an existing .npy of indices"
    if not path.exists():
        raise DdjaxError(f"initial indices {path} do not exist; {hint}")
    indices = np.load(path)
    if d.num_syn and len(indices) != d.num_syn:
        raise DdjaxError(f"distill.num_syn is {d.num_syn} but {path} holds {len(indices)} indices; "
                         "set distill.num_syn to 0 (take the file's size) or pick the matching percent")
    return indices


def inner_objective(mode: str, apply_fn, section, ssl: dict | None):
    """``(inner_loss, augment)`` of a distillation mode: MKDT's MSE and MTT's cross-entropy with
    ``distill.dsa`` as ``section`` asks, MTT-SSL's Barlow Twins with the experts' two views."""
    if mode == "mtt_ssl":
        return masked_barlow_twins(apply_fn, ssl["lambda"]), ssl_views_fn(ssl)
    inner = masked_mse if mode == "mkdt" else masked_cross_entropy
    return inner(apply_fn), dsa_augment_fn(section)


def _check_store(store: TrajectoryStore, stage: Stage, spec, zca) -> list[int]:
    d = stage.config.distill
    loss = _MODES[d.mode]
    if store.meta.get("loss") != loss:
        raise DdjaxError(f"distill.mode={d.mode!r} matches experts trained with experts.loss={loss!r}, but "
                         f"the store at {store.root} holds {store.meta.get('loss')!r} experts; train "
                         "matching experts in another --workdir or pick the mode of these")
    store.check_ssl(ssl_settings(stage.config.experts))
    store.check_compatible({"dataset": spec.name, "model": stage.config.model.name, "loss": loss,
                            "normalisation": {"mean": list(spec.mean), "std": list(spec.std),
                                              "zca": zca_digest(zca) if zca is not None else None}})
    needed = d.max_start_epoch - 1 + d.expert_epochs
    if needed not in store.meta["kept_epochs"]:
        raise DdjaxError(f"distillation reads expert epochs up to {needed} but the store keeps "
                         f"{store.meta['kept_epochs']}; train experts with more epochs kept")
    experts = store.complete_experts()
    if not experts:
        raise DdjaxError(f"no complete expert in {store.root}; run `ddjax experts` first")
    return experts


def _expert_batch(store, picks, expert_epochs):
    """Stacked start and target parameters of the picked (expert, start epoch) pairs."""
    starts = [store.load_epoch(e, s) for e, s in picks]
    targets = [store.load_epoch(e, s + expert_epochs) for e, s in picks]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    return stack(starts), stack(targets)


def check_config(config) -> None:
    """Reject impossible distillation settings before the CLI records them."""
    d = config.distill
    if d.mode not in _MODES:
        raise DdjaxError(f"distill.mode must be one of {sorted(_MODES)}, got {d.mode!r}")
    if min(d.max_start_epoch, d.syn_steps, d.experts_per_step, d.batch_syn, d.expert_epochs,
           d.checkpoint_every, d.save_every) < 1 or d.iterations < 0:
        raise DdjaxError("distill.max_start_epoch, syn_steps, experts_per_step, batch_syn, expert_epochs, "
                         "checkpoint_every and save_every must be >= 1, iterations >= 0")
    if d.mode == "mtt_ssl" and d.dsa:
        raise DdjaxError("distill.mode='mtt_ssl' augments every inner minibatch with the experts' two "
                         "DSA views already; leave distill.dsa False")
    if d.inner_dtype not in ("float32", "bfloat16", "float16"):
        raise DdjaxError(f"distill.inner_dtype must be float32, bfloat16 or float16, got {d.inner_dtype!r}")


def run(stage: Stage) -> dict:
    cfg, d = stage.config, stage.config.distill
    images, labels, spec, zca = student_inputs(stage)
    indices = init_indices(stage)
    store = TrajectoryStore.open(stage.sibling("experts") / "trajectories")
    experts = _check_store(store, stage, spec, zca)
    num_outputs, ssl = store.meta["num_outputs"], store.meta.get("ssl")
    if d.mode == "mkdt":
        targets_all, _ = load_targets(stage, labels)
    elif d.mode == "mtt":  # one-hot rows: cross-entropy to them is the reference's hard-label loss
        targets_all = np.eye(num_outputs, dtype=np.float32)[labels]
    else:  # mtt_ssl: no targets; the saved sets record the initial images' labels instead
        targets_all = None
    model = student_model(cfg, num_outputs, images.shape[1:3])
    if has_batch_stats(model, images.shape[1:3]):
        raise DdjaxError("distillation needs a student without BatchNorm (padded synthetic batches)")

    syn = {"images": jnp.asarray(images[indices]), "lr": jnp.asarray(d.lr_init, jnp.float32)}
    if targets_all is not None:
        syn["targets"] = jnp.asarray(targets_all[indices])
    init_images = syn["images"]
    optimizer = outer_optimizer(d.lr_images, d.lr_targets if d.mode == "mkdt" else 0.0, d.lr_lr,
                                clip_norm=d.clip_grad_norm)
    opt_state = optimizer.init(syn)
    inner_dtype = None if d.inner_dtype == "float32" else jnp.dtype(d.inner_dtype)
    inner_loss, augment = inner_objective(d.mode, model.apply, d, ssl)
    meta_loss = make_meta_loss(inner_loss, remat=d.remat, inner_dtype=inner_dtype, augment=augment)
    step_fn = make_outer_step(meta_loss, optimizer)
    aug_base = jax.random.fold_in(jax.random.key(cfg.seed), 1)

    rng = np.random.default_rng(cfg.seed)
    cycle, batches = ExpertCycle(experts), SyntheticBatches(len(indices), d.batch_syn)
    iteration = 0
    with RunCheckpointer(stage.directory / "resume", max_to_keep=2) as resume:
        if resume.latest_step() is not None:
            state, meta = resume.restore({"syn": syn, "opt": opt_state})
            syn, opt_state, iteration = state["syn"], state["opt"], meta["iteration"]
            rng = numpy_rng_from_state(meta["rng"])
            cycle = ExpertCycle(experts, **meta["cycle"])
            batches = SyntheticBatches(len(indices), d.batch_syn, **meta["batches"])

        def save_synset(k):
            pixels = syn["images"] if zca is None else zca_unwhiten(syn["images"], zca)
            write_synset(stage.directory / "synsets" / f"iter_{k:06d}", syn["images"],
                         denormalize(np.asarray(pixels), spec.mean, spec.std),
                         syn["targets"] if "targets" in syn else labels[indices], syn["lr"], {
                             "dataset": spec.name, "mean": list(spec.mean), "std": list(spec.std),
                             "zca": zca_digest(zca) if zca is not None else None, "iteration": k,
                             "mode": d.mode, "model": cfg.model.name, "model_kwargs": cfg.model.to_dict(),
                             "num_outputs": num_outputs, "ssl": ssl, "init": d.init,
                             "init_indices": np.asarray(indices).tolist(), "lr": float(syn["lr"])})

        if iteration == 0:
            save_synset(0)
        loss = float("nan")
        bar = progress(total=d.iterations, initial=iteration, desc="distill")
        while iteration < d.iterations:
            picks = [(cycle.next(rng), int(rng.integers(0, d.max_start_epoch)))
                     for _ in range(d.experts_per_step)]
            idx, mask = zip(*[batches.next_steps(d.syn_steps, rng) for _ in picks])
            starts, targets = _expert_batch(store, picks, d.expert_epochs)
            aug_keys = jax.random.split(jax.random.fold_in(aug_base, iteration), len(picks))
            new_syn, new_opt, loss, grads = step_fn(syn, opt_state, starts, targets,
                                                    jnp.asarray(np.stack(idx)), jnp.asarray(np.stack(mask)),
                                                    aug_keys)
            loss = float(loss)
            if not np.isfinite(loss):
                raise DdjaxError(f"matching loss became {loss} at iteration {iteration + 1}; lower "
                                 f"distill.lr_images / lr_lr; the last checkpoint ({resume.latest_step()}) "
                                 "and saved sets are kept")
            syn, opt_state, iteration = new_syn, new_opt, iteration + 1
            stage.metrics.write(iteration, loss=loss, lr=syn["lr"], experts=[p[0] for p in picks],
                                start_epochs=[p[1] for p in picks],
                                grad_norm={k: float(jnp.sqrt(jnp.sum(g ** 2))) for k, g in grads.items()},
                                image_change=float(jnp.sqrt(jnp.sum((syn["images"] - init_images) ** 2)
                                                            / jnp.sum(init_images ** 2))))
            if iteration % d.checkpoint_every == 0 or iteration == d.iterations:
                resume.save(iteration, {"syn": syn, "opt": opt_state},
                            {"iteration": iteration, "rng": numpy_rng_state(rng), "cycle": cycle.state(),
                             "batches": batches.state()})
            if iteration % d.save_every == 0 or iteration == d.iterations:
                save_synset(iteration)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{float(syn['lr']):.4g}")
        bar.close()
    final = stage.directory / "synsets" / f"iter_{iteration:06d}"
    return print_summary("distill", stage.workdir, {"synset": final, "grid": final / "grid.png"},
                         mode=d.mode, iterations=iteration, num_syn=len(indices), loss=loss,
                         lr=float(syn["lr"]))
