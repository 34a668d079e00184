"""``ddjax teacher``: train an SSL teacher (Barlow Twins or SimCLR) with a recipe of
:mod:`ddjax.ssl.recipes`, or import a PyTorch one (``teacher.import_path``), and write the teacher
artifact (:mod:`ddjax.artifacts.teacher`). A weighted k-NN classifier monitors the encoder. The
state is checkpointed every epoch (and every ``checkpoint_every_steps``), randomness derives from
the seed by ``fold_in``, so a rerun resumes exactly. Shared by both methods: MKDT's targets come
from it, LGM can use it as its frozen backbone. Details in docs/mkdt.md#teacher.

The train subset lives on every device, and each step indexes its batch there; with
``data.stream`` nothing is loaded whole: each process reads its rows of every batch (and of the
k-NN monitor's images) from the source, the same rows in the same order (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from pathlib import Path

import jax
import numpy as np

from ddjax import mesh
from ddjax.artifacts.teacher import (build_encoder, encoder_variables, feature_dim, is_complete,
                                     read_meta, write_artifact)
from ddjax.checkpoint import RunCheckpointer
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.data.stream import BatchStream, LoadedSplit, SplitReader
from ddjax.data.subsets import random_subset
from ddjax.errors import DdjaxError
from ddjax.models import TorchLayout, from_torch_state_dict
from ddjax.models.registry import canonical_model_name
from ddjax.models.state_dict_files import read_state_dict
from ddjax.runlog import print_summary, progress
from ddjax.ssl import recipes
from ddjax.ssl.encode import encode_rows
from ddjax.ssl.knn import knn_accuracy
from ddjax.ssl.optim import make_schedule
from ddjax.ssl.torch_import import encoder_state_dict
from ddjax.ssl.train import init_ssl_state, make_ssl_train_step
from ddjax.workdir import check_finite

READS = ("seed", "data", "teacher")
METHODS = {"barlow_twins": recipes.barlow_twins_cifar, "simclr": recipes.simclr_cifar}
# teacher-section field -> TeacherRecipe field; None in the config keeps the recipe's value.
RECIPE_FIELDS = {"epochs": "epochs", "batch_size": "batch_size", "optimizer": "optimizer_name",
                 "lr": "lr", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs",
                 "projector_hidden_dims": "projector_hidden_dims",
                 "projector_output_dim": "projector_output_dim"}


def check_config(config) -> None:
    """Reject an unknown method or impossible sizes before the CLI records the settings."""
    teacher_recipe(config.teacher)


def teacher_recipe(t) -> recipes.TeacherRecipe:
    """The recipe of ``teacher.method`` with the section's non-None overrides applied."""
    if t.method not in METHODS:
        raise DdjaxError(f"unknown teacher.method {t.method!r}; use one of {', '.join(METHODS)}")
    changes = {field: t[name] for name, field in RECIPE_FIELDS.items() if t.get(name) is not None}
    if "projector_hidden_dims" in changes:
        changes["projector_hidden_dims"] = tuple(changes["projector_hidden_dims"])
    recipe = dataclasses.replace(METHODS[t.method](), **changes)
    if recipe.epochs < 1 or recipe.batch_size < 2:
        raise DdjaxError(f"teacher.epochs must be >= 1 and teacher.batch_size >= 2, got "
                         f"{recipe.epochs} and {recipe.batch_size}")
    if not 0 <= recipe.warmup_epochs < recipe.epochs:
        raise DdjaxError(f"teacher.warmup_epochs must be in [0, epochs), got "
                         f"{recipe.warmup_epochs} with {recipe.epochs} epochs")
    return recipe


def encoder_description(t, image_size) -> dict:
    """What the teacher artifact's meta needs to rebuild the configured network."""
    return {"model": canonical_model_name(t.model), "model_kwargs": t.model_kwargs.to_dict(),
            "conv_impl": t.conv_impl, "init": t.init or None, "image_size": list(image_size)}


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Rows of a split (:func:`open_rows`'s) and their labels."""

    split: LoadedSplit | SplitReader
    rows: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, split, rows: np.ndarray) -> "_Rows":
        return cls(split, rows, split.read_labels(rows))


class KnnMonitor:
    """Weighted k-NN accuracy of an encoder: a train-feature bank against test features.
    ``train`` is :func:`open_rows`'s; the images are read from the splits at each evaluation
    (with ``data.stream``, from the source: each process its rows of each batch)."""

    def __init__(self, stage, train, spec):
        t, seed = stage.config.teacher, stage.config.seed
        test = open_rows(stage.config.data, "test")
        self.bank = _Rows.of(train, _subset(len(train), t.knn_bank, seed))
        self.test = _Rows.of(test, _subset(len(test), t.knn_test, seed + 1))
        self.k, self.temperature = t.knn_k, t.knn_temperature
        self.mean, self.std, self.num_classes = spec.mean, spec.std, spec.num_classes
        self.batch_size = 500

    @property
    def sizes(self) -> dict:
        return {"k": self.k, "temperature": self.temperature, "bank": len(self.bank.labels),
                "test": len(self.test.labels)}

    def __call__(self, model, variables) -> float:
        bank, test = (encode_rows(model, variables, part.split, part.rows, self.mean, self.std,
                                  self.batch_size) for part in (self.bank, self.test))
        return knn_accuracy(bank, self.bank.labels, test, self.test.labels, k=self.k,
                            temperature=self.temperature, num_classes=self.num_classes)


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    """All indices (size 0 or >= n), else a seeded random subset in increasing order."""
    if size <= 0 or size >= n:
        return np.arange(n)
    return np.sort(random_subset(n, size, seed))


@functools.lru_cache(maxsize=4)
def _programs(model, recipe, steps_per_epoch: int, mean, std):
    """Projector, optimiser, init function and jitted train step; cached so that a second run in
    the same process (tests, notebooks) reuses the compiled program."""
    projector, optimizer = recipe.projector(), recipe.optimizer(steps_per_epoch)
    step_fn = make_ssl_train_step(model, projector, recipe.loss_fn(), optimizer, recipe.augment,
                                  mean, std, encoder_joint_batch=recipe.encoder_joint_batch)
    batch = recipe.batch_size

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, images_dev, perm, position, key):
        # Data parallel: the batch split over the mesh's data axis; BatchNorm and the loss still
        # see the global batch (jit computes the one-device program), docs/scaling.md.
        idx = jax.lax.dynamic_slice_in_dim(perm, position * batch, batch)
        return step_fn(state, mesh.constrain_batch(images_dev[idx]), key)

    @functools.partial(jax.jit, donate_argnums=0)
    def batch_step(state, images, key):  # data.stream: the batch comes split (from_local_rows)
        return step_fn(state, images, key)

    @jax.jit
    def init(key, sample):
        return init_ssl_state(key, model, projector, optimizer, sample)

    return init, train_step, batch_step


def _resident_steps(images, train_step, steps_per_epoch: int):
    """``steps(perm, start)``: the epoch's steps from ``start`` on, with the train subset
    ``images`` on every device, each step taking its batch there."""
    images_dev = mesh.replicate(images)

    def steps(perm, start):
        for position in range(start, steps_per_epoch):
            yield lambda state, key, p=position: train_step(state, images_dev, perm, p, key)

    return steps


def _streamed_steps(reader: SplitReader, train: np.ndarray, batch_step, steps_per_epoch: int,
                    batch: int):
    """``steps(perm, start)`` like :func:`_resident_steps`'s, the same batches, each process
    reading its rows of them from ``reader`` (a batch or two ahead)."""
    held = mesh.local_rows(batch)

    def steps(perm, start):
        order = train[np.asarray(perm)]
        batches = (order[p * batch:(p + 1) * batch] for p in range(start, steps_per_epoch))
        with BatchStream(reader, batches, held) as parts:
            for images, _ in parts:
                images = mesh.from_local_rows(images, batch)
                yield lambda state, key, x=images: batch_step(state, x, key)

    return steps


def _as_dict(state) -> dict:
    return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state}


def _summary(stage, meta: dict) -> dict:
    artifacts = {"teacher": stage.directory / "encoder"}
    return print_summary("teacher", stage.workdir, artifacts, method=meta["method"],
                         model=meta["model"], source=meta["source"]["kind"],
                         epochs=meta.get("epochs"), knn_accuracy=meta["knn_accuracy"],
                         feature_dim=meta["feature_dim"], sha256=meta["sha256"])


def run(stage) -> dict:
    t = stage.config.teacher
    recipe = teacher_recipe(t)  # validates the method before anything is loaded
    if is_complete(stage.directory):  # finished before: a no-op that reports it again
        return _summary(stage, read_meta(stage.directory))
    if t.import_path:
        return _import(stage)
    return _train(stage, recipe)


def _common_meta(stage, model, spec, image_size, knn: KnnMonitor, accuracy: float) -> dict:
    t = stage.config.teacher
    return dict(encoder_description(t, image_size), method=t.method, dataset=spec.name,
                normalisation={"mean": list(spec.mean), "std": list(spec.std)},
                data_train_subset=int(stage.config.data.get("train_subset", 0)),
                feature_dim=feature_dim(model, image_size), knn_accuracy=accuracy, knn=knn.sizes,
                seed=stage.config.seed)


def _import(stage) -> dict:
    t = stage.config.teacher
    path = Path(t.import_path)
    state_dict = encoder_state_dict(read_state_dict(path), t.import_prefix, t.import_ignore)
    spec = dataset_spec(stage.config.data)
    train = None if spec.image_size else open_rows(stage.config.data, "train")
    image_size = tuple(spec.image_size or train.read([0])[0].shape[1:3])
    model = build_encoder(encoder_description(t, image_size))
    # Checked before the data are loaded: a mismatch fails at once, naming the entries.
    loaded = from_torch_state_dict(state_dict, TorchLayout.from_model(model, image_size))
    variables = encoder_variables(loaded["params"], loaded.get("batch_stats"))
    knn = KnnMonitor(stage, open_rows(stage.config.data, "train") if train is None else train, spec)
    accuracy = knn(model, variables)
    file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = _common_meta(stage, model, spec, image_size, knn, accuracy)
    meta.update(epochs=None, source={"kind": "imported", "path": str(path.absolute()),
                                     "file_sha256": file_digest, "prefix": t.import_prefix,
                                     "ignored": list(t.import_ignore)})
    stage.metrics.write(0, knn_accuracy=accuracy, imported=str(path))
    return _summary(stage, write_artifact(stage.directory, variables, meta))


def _train(stage, recipe) -> dict:
    cfg, t = stage.config, stage.config.teacher
    split = open_rows(cfg.data, "train")
    sample, _ = split.read([0])
    spec, image_size = dataset_spec(cfg.data), sample.shape[1:3]
    train = _subset(len(split), t.train_subset, cfg.seed)
    steps_per_epoch = len(train) // recipe.batch_size
    if steps_per_epoch < 1:
        raise DdjaxError(f"teacher.batch_size {recipe.batch_size} is larger than the {len(train)} "
                         "training images; lower it or raise teacher.train_subset")
    total = recipe.epochs * steps_per_epoch
    model = build_encoder(encoder_description(t, image_size))
    init, train_step, batch_step = _programs(model, recipe, steps_per_epoch, tuple(spec.mean),
                                             tuple(spec.std))
    lr_at = make_schedule(recipe.lr, total, recipe.warmup_epochs * steps_per_epoch, recipe.schedule,
                          recipe.warmup_init_lr, recipe.end_lr)
    base = jax.random.key(cfg.seed)
    init_key, order_key, view_key = (jax.random.fold_in(base, i) for i in range(3))
    state = mesh.replicate(init(init_key, sample))
    knn = KnnMonitor(stage, split, spec)
    steps = (_streamed_steps(split, train, batch_step, steps_per_epoch, recipe.batch_size)
             if isinstance(split, SplitReader) else
             _resident_steps(split.images[train], train_step, steps_per_epoch))

    def encoder_of(state):
        return encoder_variables(state.params["encoder"], state.batch_stats["encoder"])

    every = max(int(t.checkpoint_every_steps), 0)
    with RunCheckpointer(stage.directory / "resume") as resume:
        meta = {"step": 0, "loss_sum": 0.0, "feature_std_sum": 0.0, "knn": {}}
        restored = resume.restore_latest(_as_dict(state))
        if restored is not None:
            state, meta = state.replace(**restored[0]), restored[1]
            stage.metrics.rewind(int(meta["step"]))
        else:
            stage.metrics.rewind(-1)
            if t.knn_every > 0:
                meta["knn"]["0"] = knn(model, encoder_of(state))
                stage.metrics.write(0, epoch=0, knn_accuracy=meta["knn"]["0"])
        step = int(meta["step"])
        bar = progress(total=total, initial=step, desc=f"teacher {t.method}")
        while step < total:
            started = time.time()
            epoch, position = divmod(step, steps_per_epoch)
            perm = jax.random.permutation(jax.random.fold_in(order_key, epoch), len(train))
            for run_step in steps(perm, position):
                state, metrics = run_step(state, jax.random.fold_in(view_key, step))
                metrics = mesh.fetch(metrics)
                loss = check_finite(float(metrics["loss"]), f"the teacher loss at step {step + 1}",
                                    "lower teacher.lr")
                meta["loss_sum"] += loss
                meta["feature_std_sum"] += float(metrics["feature_std"])
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", epoch=epoch + 1)
                if every and step % every == 0 and step % steps_per_epoch:
                    resume.save(step, _as_dict(state), dict(meta, step=step))
            done = epoch + 1
            record = {"epoch": done, "loss": meta["loss_sum"] / steps_per_epoch,
                      "feature_std": meta["feature_std_sum"] / steps_per_epoch,
                      "lr": float(lr_at(step - 1)),
                      "train_seconds": round(time.time() - started, 3)}
            if (t.knn_every > 0 and done % t.knn_every == 0) or done == recipe.epochs:
                record["knn_accuracy"] = meta["knn"][str(done)] = knn(model, encoder_of(state))
            meta.update(step=step, loss_sum=0.0, feature_std_sum=0.0)
            stage.metrics.write(step, **record)
            resume.save(step, _as_dict(state), meta)
            bar.set_postfix(loss=f"{record['loss']:.4g}", knn=record.get("knn_accuracy", "-"))
        bar.close()
    accuracy = meta["knn"][str(recipe.epochs)]
    out = _common_meta(stage, model, spec, image_size, knn, accuracy)
    out.update(epochs=recipe.epochs, steps=total, train_examples=len(train),
               knn_by_epoch=meta["knn"],
               source={"kind": "trained", "recipe": dataclasses.asdict(recipe)})
    return _summary(stage, write_artifact(stage.directory, encoder_of(state), out))

