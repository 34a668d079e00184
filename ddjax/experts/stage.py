"""``ddjax experts``: train E student experts on the real data and store their trajectories.

Experts train ``experts_per_program`` at a time in one vmapped program. Expert ``e`` draws its
initialisation and its data orders from ``fold_in(key(seed), e)``, so its trajectory does not
depend on how experts are grouped. After every epoch the group's parameters go to the store and
the group's training state (parameters and momentum) to a resume checkpoint: a killed run,
rerun with the same command, keeps every finished expert and continues the current group from
its last finished epoch.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from ddjax.checkpoint import RunCheckpointer
from ddjax.data.transforms import zca_digest
from ddjax.errors import DdjaxError
from ddjax.experts.inputs import load_targets, student_inputs, student_model
from ddjax.experts.store import TrajectoryStore
from ddjax.experts.train import (cross_entropy_loss_fn, epoch_permutations, make_epoch_fn,
                                 mse_loss_fn, torch_sgd)
from ddjax.models import has_batch_stats
from ddjax.models.registry import dummy_input
from ddjax.runlog import print_summary, progress
from ddjax.stage import Stage

SECTIONS = ("seed", "data", "model", "experts")
def expert_keys(seed: int, experts: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-expert (init, data-order, augmentation) keys, each derived from the expert's index alone."""
    base = [jax.random.fold_in(jax.random.key(seed), e) for e in experts]
    return tuple(jnp.stack([jax.random.fold_in(k, purpose) for k in base]) for purpose in range(3))


def dsa_augment_fn(section):
    """DSA as the config section asks (``dsa``, ``dsa_strategy``), or None when it is off."""
    if not section.get("dsa", False):
        return None
    from ddjax.distill.dsa import DsaParams, dsa_augment

    return lambda key, images: dsa_augment(key, images, DsaParams(), section.dsa_strategy)


def kept_epochs(epochs: int, keep: int) -> list[int]:
    """Snapshots to store: 0..epochs, or 0..keep when ``keep`` >= 0 (what distillation reads)."""
    last = epochs if keep < 0 else min(keep, epochs)
    return list(range(last + 1))


def check_config(config) -> None:
    """Reject impossible expert settings before the CLI records them."""
    exp = config.experts
    if exp.loss not in ("mse", "ce"):
        raise DdjaxError(f"experts.loss must be 'mse' (knowledge distillation) or 'ce' (labels), got {exp.loss!r}")
    if exp.epochs < 1 or exp.num_experts < 1 or exp.experts_per_program < 1 or exp.batch_size < 1:
        raise DdjaxError("experts.epochs, num_experts, experts_per_program and batch_size must be >= 1")


def run(stage: Stage) -> dict:
    cfg, exp = stage.config, stage.config.experts
    images, labels, spec, zca = student_inputs(stage, fit_missing_zca=True)
    targets, num_outputs = load_targets(stage, labels)
    image_size = images.shape[1:3]
    model = student_model(cfg, num_outputs, image_size)
    if has_batch_stats(model, image_size):
        raise DdjaxError(f"model {cfg.model.name!r} has BatchNorm; experts need a model without running "
                         "statistics (e.g. convnet with instance norm)")
    params_shape = jax.eval_shape(lambda k: model.init(k, dummy_input(image_size))["params"],
                                  jax.random.key(0))
    keep = kept_epochs(exp.epochs, exp.keep_epochs)
    store = TrajectoryStore.create_or_open(stage.directory / "trajectories", {
        "dataset": spec.name, "model": cfg.model.name, "model_kwargs": {"width": cfg.model.get("width")},
        "loss": exp.loss, "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params_shape))),
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std),
                          "zca": zca_digest(zca) if zca is not None else None},
        "num_outputs": num_outputs, "optimizer": {"name": "sgd", "lr": exp.lr, "momentum": exp.momentum,
                                                  "weight_decay": exp.weight_decay},
        "batch_size": exp.batch_size, "epochs": exp.epochs, "kept_epochs": keep, "seed": cfg.seed,
        "dsa": exp.dsa_strategy if exp.get("dsa", False) else None,
    })
    done = set(store.complete_experts())
    todo = [e for e in range(exp.num_experts) if e not in done]
    optimizer = torch_sgd(exp.lr, exp.momentum, exp.weight_decay)
    loss_fn = mse_loss_fn(model.apply) if exp.loss == "mse" else cross_entropy_loss_fn(model.apply)
    epoch_fn = make_epoch_fn(loss_fn, optimizer, exp.batch_size, dsa_augment_fn(exp))
    images_dev, targets_dev = jnp.asarray(images), jnp.asarray(targets)
    final_losses = {e: store.expert_summary(e)["final_loss"] for e in done}
    bar = progress(total=len(todo) * exp.epochs, desc="experts")
    with RunCheckpointer(stage.directory / "resume", max_to_keep=1) as resume:
        for first in range(0, len(todo), exp.experts_per_program):
            group = todo[first:first + exp.experts_per_program]
            init_keys, data_keys, aug_keys = expert_keys(cfg.seed, group)
            params = jax.vmap(lambda k: model.init(k, dummy_input(image_size))["params"])(init_keys)
            opt_state = jax.vmap(optimizer.init)(params)
            start, loss_E = 0, np.full(len(group), np.nan)
            saved = resume.restore_meta()
            if saved is not None and saved["experts"] == group:
                state, _ = resume.restore({"params": params, "opt": opt_state})
                params, opt_state, start = state["params"], state["opt"], saved["epoch"]
                loss_E = np.asarray(saved["loss"])
            bar.update(start)
            for i, e in enumerate(group):
                store.save_epoch(e, 0, jax.tree.map(lambda x: np.asarray(x[i]), params))
            for epoch in range(start, exp.epochs):
                perms = epoch_permutations(data_keys, epoch, images.shape[0])
                epoch_aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(aug_keys)
                params, _, opt_state, loss_E = epoch_fn(params, {}, opt_state, images_dev, targets_dev,
                                                        perms, epoch_aug_keys)
                loss_E = np.asarray(loss_E)
                if not np.isfinite(loss_E).all():
                    raise DdjaxError(f"expert loss became {loss_E} at epoch {epoch + 1}; lower experts.lr")
                if epoch + 1 in keep:
                    for i, e in enumerate(group):
                        store.save_epoch(e, epoch + 1, jax.tree.map(lambda x: np.asarray(x[i]), params))
                resume.save(group[0] * (exp.epochs + 1) + epoch + 1, {"params": params, "opt": opt_state},
                            {"experts": group, "epoch": epoch + 1, "loss": loss_E.tolist()})
                stage.metrics.write(epoch + 1, experts=group, loss=loss_E)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_E.mean():.4g}")
            for i, e in enumerate(group):
                final_losses[e] = float(loss_E[i])
                store.mark_complete(e, {"final_loss": final_losses[e]})
    bar.close()
    return print_summary("experts", stage.workdir, {"trajectories": store.root},
                         experts=len(final_losses), epochs=exp.epochs,
                         final_loss_mean=float(np.mean(list(final_losses.values()))))
