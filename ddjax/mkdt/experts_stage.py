"""``ddjax experts``: train E student experts on the real data and store their trajectories.

Experts train ``experts_per_program`` at a time in one vmapped program, with the objective that
``experts.loss`` registers (``ddjax.mkdt.objectives``); expert ``e`` draws everything from
``fold_in(key(seed), e)``, so its trajectory does not depend on the grouping. Every kept epoch
goes to the store and the group's state to a resume checkpoint: a rerun keeps every finished
expert and continues the current group from its last finished epoch. See docs/mkdt.md#experts.
"""

from __future__ import annotations

import jax
import numpy as np

from ddjax import mesh
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.checkpoint import RunCheckpointer
from ddjax.errors import DdjaxError
from ddjax.mkdt import objectives
from ddjax.mkdt.epochs import student_epochs
from ddjax.mkdt.experts import epoch_permutations, expert_keys, kept_epochs, torch_sgd
from ddjax.mkdt.student import load_representations, store_identity, student_model, student_rows
from ddjax.models import has_batch_stats
from ddjax.models.registry import dummy_input
from ddjax.runlog import print_summary, progress
from ddjax.workdir import Stage, check_finite

READS = ("seed", "data", "model", "experts")


def check_config(config) -> None:
    """Reject impossible expert settings before the CLI records them."""
    exp = config.experts
    objectives.check_experts(exp)
    if exp.epochs < 1 or exp.num_experts < 1 or exp.experts_per_program < 1 or exp.batch_size < 1:
        raise DdjaxError("experts.epochs, num_experts, experts_per_program and batch_size must be >= 1")


def _save_epochs(store: TrajectoryStore, group: list[int], epoch: int, params_E) -> None:
    """Each expert's parameters after ``epoch``, gathered to the host by every process and
    written once (the store writes on process 0)."""
    host = mesh.fetch(params_E)
    for i, e in enumerate(group):
        store.save_epoch(e, epoch, jax.tree.map(lambda x: x[i], host))


def run(stage: Stage) -> dict:
    cfg, exp = stage.config, stage.config.experts
    objective = objectives.by_expert_loss(exp.loss)
    ssl = objective.identity(exp)
    rows = student_rows(cfg, stage.workdir, fit_missing_zca=True)
    spec, zca, num_examples, image_size = rows.spec, rows.zca, len(rows), rows.image_size
    targets, num_outputs = objective.expert_targets(
        num_examples, rows.labels,
        lambda: load_representations(cfg, stage.workdir, spec, num_examples), exp)
    model = student_model(cfg, num_outputs, image_size)
    if has_batch_stats(model, image_size):
        raise DdjaxError(f"model {cfg.model.name!r} has BatchNorm; experts need a model without running "
                         "statistics (e.g. convnet with instance norm)")
    params_shape = jax.eval_shape(lambda k: model.init(k, dummy_input(image_size))["params"],
                                  jax.random.key(0))
    keep = kept_epochs(exp.epochs, exp.keep_epochs)
    store = TrajectoryStore.create_or_open(TRAJECTORIES.locate(stage.workdir), {
        **store_identity(cfg, stage.workdir, spec, zca, exp.loss),
        "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params_shape))),
        "num_outputs": num_outputs, "optimizer": {"name": "sgd", "lr": exp.lr, "momentum": exp.momentum,
                                                  "weight_decay": exp.weight_decay},
        "batch_size": exp.batch_size, "epochs": exp.epochs, "kept_epochs": keep, "seed": cfg.seed,
        "dsa": exp.dsa_strategy if exp.dsa else None, "ssl": ssl,
    })
    done = set(store.complete_experts())
    todo = [e for e in range(exp.num_experts) if e not in done]
    optimizer = torch_sgd(exp.lr, exp.momentum, exp.weight_decay)
    loss_fn, augment = objective.expert_objective(model.apply, exp, ssl)
    # Layout (docs/scaling.md): a group's experts split over the data axis when the group divides
    # it (else replicated: every device trains the whole group); the data replicated, or with
    # data.stream each process reads its experts' minibatches step by step.
    data = rows.with_targets(targets) if cfg.data.get("stream", False) else \
        (rows.every_image(), targets)
    epoch_fn = student_epochs(loss_fn, optimizer, exp.batch_size, augment, data)
    final_losses = {e: store.expert_summary(e)["final_loss"] for e in done}
    # One step per (group, epoch), unique in the stage: checkpoints and metrics share it.
    step_of = lambda group, epoch: group[0] * (exp.epochs + 1) + epoch  # noqa: E731
    with RunCheckpointer(stage.directory / "resume") as resume, \
            progress(total=len(todo) * exp.epochs, desc="experts") as bar:
        for first in range(0, len(todo), exp.experts_per_program):
            group = todo[first:first + exp.experts_per_program]
            init_keys, data_keys, aug_keys = expert_keys(cfg.seed, group)
            params = jax.vmap(lambda k: model.init(k, dummy_input(image_size))["params"])(init_keys)
            params, opt_state = mesh.shard((params, jax.vmap(optimizer.init)(params)))
            start, loss_E = 0, np.full(len(group), np.nan)
            latest = resume.latest_step()
            # Only this group's checkpoints fit its state (another group may have another size).
            if latest is not None and (latest - 1) // (exp.epochs + 1) == group[0]:
                restored = resume.restore_latest({"params": params, "opt": opt_state})
                if restored is not None and restored[1]["experts"] == group:
                    (state, saved) = restored
                    params, opt_state, start = state["params"], state["opt"], saved["epoch"]
                    loss_E = np.asarray(saved["loss"])
            stage.metrics.rewind(step_of(group, start))
            bar.update(start)
            _save_epochs(store, group, 0, params)
            for epoch in range(start, exp.epochs):
                perms = epoch_permutations(data_keys, epoch, num_examples)
                epoch_aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(aug_keys)
                params, _, opt_state, loss_E = epoch_fn((params, {}, opt_state), perms,
                                                        epoch_aug_keys)
                loss_E = mesh.fetch(loss_E)
                check_finite(float(np.max(np.abs(loss_E))), f"the loss of experts {group} at epoch "
                             f"{epoch + 1}", "lower experts.lr")
                if epoch + 1 in keep:
                    _save_epochs(store, group, epoch + 1, params)
                stage.metrics.write(step_of(group, epoch + 1), experts=group, epoch=epoch + 1,
                                    loss=loss_E)
                resume.save(step_of(group, epoch + 1), {"params": params, "opt": opt_state},
                            {"experts": group, "epoch": epoch + 1, "loss": loss_E.tolist()})
                bar.update(1)
                bar.set_postfix(loss=f"{loss_E.mean():.4g}")
            for i, e in enumerate(group):
                final_losses[e] = float(loss_E[i])
                store.mark_complete(e, {"final_loss": final_losses[e]})
    return print_summary("experts", stage.workdir, {"trajectories": store.root},
                         experts=len(final_losses), epochs=exp.epochs,
                         final_loss_mean=float(np.mean(list(final_losses.values()))))
