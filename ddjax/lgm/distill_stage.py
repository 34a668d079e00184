"""``ddjax distill lgm``: one synthetic set per backbone of ``lgm.backbones``, by linear gradient
matching on the frozen backbone.

For each backbone (by tag) the stage optimises ``ipc`` images per class with Adam, ``iterations +
1`` updates numbered 0..iterations as the reference counts them, on real batches drawn from a
per-epoch permutation of the train split. Every random draw derives from ``key(seed)`` and the
step or epoch, and the levels and Adam state are checkpointed in ``lgm/<tag>/resume``, so a rerun
resumes exactly. Writes the ``LGM_SET`` artifact and PNG snapshots under ``lgm/<tag>/snapshots``.
Schedule, batches and randomness: docs/lgm.md#schedule.

Layout (docs/scaling.md): the levels, Adam state, probes and backbone are replicated over the
mesh; the real batch and the augmented views are split over its data axis. Every process draws
the same batches from ``key(seed)`` and reads its rows of each (from the split in memory, or with
``data.stream`` from the data source) in a background thread a batch ahead; the host places step
``s + 1``'s real batch while the device runs step ``s``, and reads the losses back only when it
logs, checkpoints, snapshots or finishes (checking them, and the levels, finite first).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ddjax import mesh
from ddjax.artifacts.image_set import LGM_SET, write_image_set
from ddjax.checkpoint import RunCheckpointer
from ddjax.config import config_to_dict
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.data.stream import BatchStream, LoadedSplit, SplitReader
from ddjax.errors import DdjaxError
from ddjax.lgm import pyramid
from ddjax.lgm.augment import check_mode
from ddjax.lgm.backbones import backbone_entries, backbone_identity, load_checked
from ddjax.lgm.step import PROBE_GRADS, LgmProblem, lgm_optimizer, make_train_step
from ddjax.runlog import print_summary, progress
from ddjax.viz import save_image_grid
from ddjax.workdir import Stage, check_finite, due

READS = ("seed", "data", "lgm")


def check_config(config) -> None:
    """The CLI's hook: refuse ``lgm`` settings that cannot work, before they are recorded."""
    lgm = config.lgm
    if lgm.ipc < 1:
        raise DdjaxError(f"lgm.ipc must be >= 1 (images per class), got {lgm.ipc}")
    for field in ("augs_per_batch", "num_probes", "pyramid_extent_it", "checkpoint_every",
                  "log_every"):
        if lgm[field] < 1:
            raise DdjaxError(f"lgm.{field} must be >= 1, got {lgm[field]}")
    if lgm.iterations < 0 or lgm.chunk_size < 0 or lgm.image_log_every < 0:
        raise DdjaxError("lgm.iterations, lgm.chunk_size and lgm.image_log_every must be >= 0")
    if lgm.probe_grad not in PROBE_GRADS:
        raise DdjaxError(f"lgm.probe_grad must be one of {', '.join(PROBE_GRADS)}, "
                         f"got {lgm.probe_grad!r}")
    if lgm.distill_mode not in pyramid.DISTILL_MODES:
        raise DdjaxError(f"lgm.distill_mode must be one of {', '.join(pyramid.DISTILL_MODES)}")
    if lgm.init_mode not in pyramid.INIT_MODES:
        raise DdjaxError(f"lgm.init_mode must be one of {', '.join(pyramid.INIT_MODES)}")
    check_mode(lgm.aug_mode)


def synthetic_labels(num_classes: int, ipc: int) -> np.ndarray:
    """Class-ordered labels [0]*ipc + [1]*ipc + ... as the reference orders its set."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), ipc)


class RealBatches:
    """Batch ``step``'s indices: epoch ``step // per_epoch`` of a key-derived permutation, dropping
    the last partial batch; computed from the step alone, so resuming needs no extra state."""

    def __init__(self, key: jax.Array, n: int, batch: int):
        if batch > n:
            raise DdjaxError(f"a real batch of ipc * augs_per_batch * classes = {batch} images "
                             f"needs that many train images, the split has {n}; "
                             "lower lgm.augs_per_batch")
        self.key, self.n, self.batch, self.per_epoch = key, n, batch, n // batch
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            key = jax.random.fold_in(self.key, epoch)
            self._perm = np.asarray(jax.random.permutation(key, self.n))
        return np.sort(self._perm[position * self.batch:(position + 1) * self.batch])


def build_problem(lgm, backbone, syn_res: int, num_classes: int) -> LgmProblem:
    """The static description of the distillation from the ``lgm`` section and a backbone."""
    return LgmProblem(features=backbone.features, mean=tuple(backbone.mean),
                      std=tuple(backbone.std), feature_dim=backbone.feature_dim,
                      num_classes=num_classes, crop_res=backbone.resolution, syn_res=syn_res,
                      augs=lgm.augs_per_batch, aug_mode=lgm.aug_mode,
                      decorrelate=lgm.decorrelate_color, num_probes=lgm.num_probes,
                      probe_grad=lgm.probe_grad, chunk_size=lgm.chunk_size,
                      constrain=mesh.constrain_batch)


@jax.jit
def all_finite(levels) -> jax.Array:
    """True when every value of the levels is finite (the guard before anything is written)."""
    return jnp.all(jnp.stack([jnp.isfinite(level).all() for level in levels]))


class LossLog:
    """The losses of the steps dispatched but not yet read back, fetched together (one wait for
    the device) and checked finite, with the levels, before anything of theirs is written; the
    last ``keep`` host values feed ``loss_mean`` and the checkpoint's ``recent``."""

    def __init__(self, tag: str, keep: int, recent: list[float]):
        self.tag, self.keep, self.recent = tag, keep, list(recent)
        self.pending: list[tuple[int, jax.Array]] = []

    def add(self, step: int, loss: jax.Array) -> None:
        self.pending.append((step, loss))

    def flush(self, levels) -> list[float]:
        """Read back the pending losses and whether ``levels`` are finite; one line naming the
        first step whose loss is not finite (or the levels) otherwise. Every process calls it."""
        losses, finite = mesh.fetch(([loss for _, loss in self.pending], all_finite(levels)))
        for (step, _), loss in zip(self.pending, losses):
            check_finite(float(loss), f"the LGM meta-loss at step {step} for backbone {self.tag}",
                         "lower lgm.lr")
        if not bool(finite):   # after the last pending step (flush follows a step)
            raise DdjaxError(f"the LGM pyramid levels of backbone {self.tag} became non-finite "
                             f"by step {self.pending[-1][0]}; lower lgm.lr")
        self.pending = []
        self.recent = (self.recent + [float(loss) for loss in losses])[-self.keep:]
        return self.recent


def distill_one(stage: Stage, tag: str, spec: str, train: LoadedSplit | SplitReader,
                data_spec) -> dict:
    """Distil (or resume, or find done) the set of one backbone from the rows of ``train``
    (:func:`ddjax.data.pipeline.open_rows`'s); returns its summary figures."""
    cfg, lgm = stage.config, stage.config.lgm
    out_dir = stage.directory / tag
    set_dir = LGM_SET.locate(stage.workdir, tag=tag)
    height, width = train.read([0])[0].shape[1:3]
    if not lgm.syn_res and height != width:
        raise DdjaxError(f"train images are {height}x{width}; set lgm.syn_res")
    syn_res = lgm.syn_res or height
    identity = {"dataset": data_spec.name, "backbone": backbone_identity(spec), "ipc": lgm.ipc,
                "syn_res": syn_res}
    if LGM_SET.is_complete(set_dir):
        meta = LGM_SET.read_meta(set_dir)
        LGM_SET.check(meta, identity, set_dir)
        return {"set": set_dir, "final_loss": meta.get("final_loss"), "resumed_from": "done"}
    backbone = load_checked(spec)
    num_classes = data_spec.num_classes
    problem = build_problem(lgm, backbone, syn_res, num_classes)
    optimizer = lgm_optimizer(lgm.lr)
    step_fn = make_train_step(problem, float(lgm.lr))
    syn_labels = synthetic_labels(num_classes, lgm.ipc)
    base = jax.random.key(cfg.seed)
    level_key, step_key = jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)
    batches = RealBatches(jax.random.fold_in(base, 3), len(train),
                          lgm.ipc * lgm.augs_per_batch * num_classes)
    # Placed once: replicated state and constants (a numpy input would be copied every step).
    variables, syn_labels_d, step_key_d = mesh.replicate((backbone.variables, syn_labels,
                                                          step_key))
    levels = mesh.replicate(pyramid.init_levels(
        jax.random.fold_in(base, 0), len(syn_labels), mode=lgm.distill_mode, syn_res=syn_res,
        start_res=lgm.pyramid_start_res, init=lgm.init_mode))
    opt_state, start, recent, active = mesh.replicate(optimizer.init(levels)), 0, [], 1
    masks: dict[int, jax.Array] = {}

    def mask(active: int) -> jax.Array:
        if active not in masks:
            masks[active] = mesh.replicate(pyramid.active_mask(active, len(levels)))
        return masks[active]

    def prepare(step: int):
        """Step ``step``'s real batch (rows split over the data axis) and number, placed."""
        return (*mesh.from_local_rows(next(reads), batches.batch), mesh.replicate(np.int32(step)))

    def snapshot(step: int) -> None:
        grid = mesh.fetch(pyramid.decode_jit(levels, syn_res, lgm.decorrelate_color))
        if mesh.is_primary():
            save_image_grid(grid, out_dir / "snapshots" / f"step_{step:06d}.png",
                            columns=lgm.ipc if lgm.ipc > 1 else len(syn_labels),
                            scale=max(1, 128 // syn_res))

    with RunCheckpointer(out_dir / "resume") as resume:
        restored = resume.restore_latest({"levels": levels, "opt": opt_state})
        if restored is not None:   # saved after step ``saved["step"] - 1``
            state, saved = restored
            levels, opt_state = list(state["levels"]), state["opt"]
            start = int(saved["step"])
            recent, active = list(saved.get("recent", [])), int(saved["active"])
        stage.metrics.rewind(start - 1, backbone=tag)   # the steps from ``start`` on are redone
        last = lgm.iterations
        log = LossLog(tag, lgm.log_every, recent)
        reads = BatchStream(train, map(batches.indices, range(start, last + 1)),
                            mesh.local_rows(batches.batch))
        with reads, progress(total=last + 1, initial=start, desc=f"lgm {tag}") as bar:
            timer = time.perf_counter()
            batch = prepare(start) if start <= last else None
            for step in range(start, last + 1):
                if pyramid.extension_due(step, lgm.pyramid_extent_it) and active < len(levels):
                    # Rare (every pyramid_extent_it steps): on the host, then placed again.
                    grown, active = pyramid.extend_levels(
                        [jnp.asarray(level) for level in mesh.fetch(levels)], active,
                        jax.random.fold_in(level_key, step), lgm.init_mode)
                    levels = mesh.replicate(grown)
                    opt_state = mesh.replicate(optimizer.init(grown))
                x_real, y_real, step_d = batch
                levels, opt_state, loss = step_fn(levels, opt_state, mask(active), variables,
                                                  x_real, y_real, syn_labels_d,
                                                  (step_key_d, step_d))
                log.add(step, loss)
                batch = prepare(step + 1) if step < last else None   # while the device runs
                bar.update(1)
                snap = bool(lgm.image_log_every) and due(step, lgm.image_log_every, last)
                save = due(step + 1, lgm.checkpoint_every, last + 1)
                if due(step, lgm.log_every, last) or snap or save:
                    recent = log.flush(levels)   # the wait for the device; raises when diverged
                    bar.set_postfix(loss=f"{recent[-1]:.4f}", levels=active)
                if due(step, lgm.log_every, last):
                    now = time.perf_counter()
                    stage.metrics.write(step, backbone=tag, loss=recent[-1],
                                        loss_mean=float(np.mean(recent)), levels=active,
                                        seconds=round(now - timer, 3))
                    timer = now
                if snap:
                    snapshot(step)
                if save:
                    resume.save(step + 1, {"levels": levels, "opt": opt_state},
                                {"step": step + 1, "active": active, "recent": recent,
                                 "loss": recent[-1]})
    final_loss = recent[-1] if recent else None
    meta = dict(identity, method="lgm", tag=tag, backbone_name=backbone.name,
                feature_dim=backbone.feature_dim, crop_res=backbone.resolution,
                mean=list(backbone.mean), std=list(backbone.std), num_classes=num_classes,
                class_names=list(data_spec.class_names or []), updates=last + 1,
                final_loss=final_loss, seed=cfg.seed, lgm=config_to_dict(lgm))
    images01 = mesh.fetch(pyramid.decode_jit(levels, syn_res, lgm.decorrelate_color))
    write_image_set(LGM_SET, set_dir, images01, syn_labels, meta, class_names=data_spec.class_names)
    return {"set": set_dir, "final_loss": final_loss, "resumed_from": start}


def run(stage: Stage) -> dict:
    lgm = stage.config.lgm
    entries = backbone_entries(lgm.backbones, stage.workdir)
    data_spec = dataset_spec(stage.config.data)
    train = open_rows(stage.config.data, "train")
    started = time.perf_counter()
    results = {tag: distill_one(stage, tag, spec, train, data_spec)
               for tag, spec in entries}
    return print_summary("distill lgm", stage.workdir,
                         {tag: r["set"] for tag, r in results.items()},
                         final_loss={tag: r["final_loss"] for tag, r in results.items()},
                         updates=lgm.iterations + 1, last_step=lgm.iterations,
                         seconds=round(time.perf_counter() - started, 1))
