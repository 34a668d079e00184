"""``ddjax experts``: train E student experts on the real data and store their trajectories.

Experts train ``experts_per_program`` at a time in one vmapped program. Expert ``e`` draws its
initialisation and its data orders from ``fold_in(key(seed), e)``, so its trajectory does not
depend on how experts are grouped. After every epoch the group's parameters go to the store and
the group's training state (parameters and momentum) to a resume checkpoint: a killed run,
rerun with the same command, keeps every finished expert and continues the current group from
its last finished epoch.

``experts.loss`` picks the objective: 'mse' (MKDT's KD to teacher representations), 'ce' (classic
MTT's labels) or 'barlow_twins' (the naive MTT-SSL baseline of MKDT's Appendix F: Barlow Twins
between the student's outputs on two DSA views of each minibatch; see ``ssl_settings``). The
store's metadata records the loss and, for Barlow Twins, the settings that define it.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from ddjax.checkpoint import RunCheckpointer
from ddjax.data.transforms import zca_digest
from ddjax.errors import DdjaxError
from ddjax.mkdt.student import load_targets, student_inputs, student_model
from ddjax.artifacts.trajectories import TrajectoryStore
from ddjax.mkdt.experts import (barlow_twins_loss_fn, cross_entropy_loss_fn, epoch_permutations,
                                 make_epoch_fn, mse_loss_fn, torch_sgd, two_views)
from ddjax.models import has_batch_stats
from ddjax.models.registry import dummy_input
from ddjax.runlog import print_summary, progress
from ddjax.workdir import Stage

READS = ("seed", "data", "model", "experts")
LOSSES = ("mse", "ce", "barlow_twins")


def expert_keys(seed: int, experts: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-expert (init, data-order, augmentation) keys, each derived from the expert's index alone."""
    base = [jax.random.fold_in(jax.random.key(seed), e) for e in experts]
    return tuple(jnp.stack([jax.random.fold_in(k, purpose) for k in base]) for purpose in range(3))


def dsa_augment_fn(section):
    """DSA as the config section asks (``dsa``, ``dsa_strategy``), or None when it is off."""
    if not section.get("dsa", False):
        return None
    from ddjax.mkdt.dsa import DsaParams, dsa_augment

    return lambda key, images: dsa_augment(key, images, DsaParams(), section.dsa_strategy)


def ssl_settings(section) -> dict | None:
    """What defines a Barlow Twins expert's objective, or None for 'mse'/'ce' experts.

    Recorded in the trajectory store; ``distill.mode = 'mtt_ssl'`` rebuilds its inner loss from it.
    The two views are DSA (``ddjax.mkdt.dsa``) with ``section.dsa_strategy`` in mode
    ``section.ssl_dsa_mode``: DSA is differentiable with respect to the images and acts in the
    student's input space (normalised, or ZCA-whitened), so the distillation inner loop can apply
    exactly the experts' augmentation to the synthetic images and differentiate through it. The
    torchvision-style SSL views of ``ddjax.ssl.augment`` act on [0, 1] pixels and include steps
    not meant to be differentiated (HSV hue jitter, crop-box search), so they are not used. Mode
    'M' (the default) composes every group of the strategy, i.e. crop, flip, colour, scale,
    rotation and cutout together as SSL pipelines compose their transforms; MTT's mode 'S' applies
    a single group per view, which makes the two views nearly alike.
    """
    if section.loss != "barlow_twins":
        return None
    return {"method": "barlow_twins", "lambda": float(section.ssl_lambda), "views": "dsa",
            "dsa_strategy": section.dsa_strategy, "dsa_mode": section.ssl_dsa_mode}


def ssl_views_fn(settings: dict):
    """The two-view augmentation of ``ssl_settings``: ``(key, x_BHWC) -> views_2BHWC``."""
    from ddjax.mkdt.dsa import DsaParams, dsa_augment

    params = DsaParams(aug_mode=settings["dsa_mode"])
    return two_views(lambda key, images: dsa_augment(key, images, params, settings["dsa_strategy"]))


def ssl_objective(apply_fn, settings: dict):
    """``(loss_fn, augment)`` for ``make_epoch_fn`` of the Barlow Twins objective that
    ``ssl_settings`` describes: experts train with it, MTT-SSL sets pre-train with it."""
    return barlow_twins_loss_fn(apply_fn, settings["lambda"]), ssl_views_fn(settings)


def expert_objective(section, apply_fn):
    """``(loss_fn, augment)`` of ``section.loss`` for ``make_epoch_fn``."""
    if section.loss == "barlow_twins":
        return ssl_objective(apply_fn, ssl_settings(section))
    loss_fn = mse_loss_fn(apply_fn) if section.loss == "mse" else cross_entropy_loss_fn(apply_fn)
    return loss_fn, dsa_augment_fn(section)


def kept_epochs(epochs: int, keep: int) -> list[int]:
    """Snapshots to store: 0..epochs, or 0..keep when ``keep`` >= 0 (what distillation reads)."""
    last = epochs if keep < 0 else min(keep, epochs)
    return list(range(last + 1))


def check_config(config) -> None:
    """Reject impossible expert settings before the CLI records them."""
    exp = config.experts
    if exp.loss not in LOSSES:
        raise DdjaxError(f"experts.loss must be 'mse' (knowledge distillation), 'ce' (labels) or "
                         f"'barlow_twins' (SSL, the naive MTT-SSL baseline), got {exp.loss!r}")
    if exp.loss == "barlow_twins":
        from ddjax.mkdt.dsa import AUG_MODES, parse_strategy

        if exp.get("dsa", False):
            raise DdjaxError("experts.loss='barlow_twins' always makes two DSA views of each minibatch "
                             "(experts.dsa_strategy, experts.ssl_dsa_mode); leave experts.dsa False")
        if exp.ssl_dsa_mode not in AUG_MODES or not parse_strategy(exp.dsa_strategy):
            raise DdjaxError(f"Barlow Twins experts need experts.ssl_dsa_mode in {AUG_MODES} and a DSA "
                             f"strategy, got {exp.ssl_dsa_mode!r} and {exp.dsa_strategy!r}")
        if exp.ssl_output_dim < 1 or exp.ssl_lambda < 0:
            raise DdjaxError("experts.ssl_output_dim must be >= 1 and experts.ssl_lambda >= 0")
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
        "dsa": exp.dsa_strategy if exp.get("dsa", False) else None, "ssl": ssl_settings(exp),
    })
    store.check_ssl(ssl_settings(exp))
    done = set(store.complete_experts())
    todo = [e for e in range(exp.num_experts) if e not in done]
    optimizer = torch_sgd(exp.lr, exp.momentum, exp.weight_decay)
    loss_fn, augment = expert_objective(exp, model.apply)
    epoch_fn = make_epoch_fn(loss_fn, optimizer, exp.batch_size, augment)
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
