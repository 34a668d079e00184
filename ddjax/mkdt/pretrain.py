"""MKDT's evaluation encoders: pre-train fresh networks on a set, then read their frozen features.

Every seed pre-trains its own encoder (all seeds in one vmapped program, ``student_epochs``)
by MSE to the set's targets, or with its experts' objective for sets without targets (MTT-SSL).
Seed ``s`` draws its initialisation, data order and views from ``fold_in(key(s), purpose)``, so
the rows of a results table differ only in their data. Features are the raw flattened trunk
output; BatchNorm networks compute train features in train mode, as the reference's ``le_run``.
The seed axis is split over the mesh's data axis when the seeds divide over it (replicated
otherwise; docs/scaling.md). Given a checkpointer, pre-training saves after an epoch once a
minute has passed since the last save, and resumes exactly from the latest one (the full-data
row trains for hours on a CPU; a 1,000-image row's epoch can take less than a save). See
docs/mkdt.md#evaluation.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax import mesh
from ddjax.checkpoint import RunCheckpointer
from ddjax.data.stream import LoadedSplit, SplitReader
from ddjax.mkdt.epochs import num_rows, student_epochs
from ddjax.mkdt.experts import epoch_permutations, mse_loss_fn, torch_sgd
from ddjax.mkdt.student import StudentRows
from ddjax.models.batched import map_batches
from ddjax.models.registry import dummy_input
from ddjax.runlog import progress

Prepare = Callable[[np.ndarray], np.ndarray]


def seed_keys(seeds, purpose: int) -> jax.Array:
    """``[S]`` keys ``fold_in(key(seed), purpose)``: 0 encoder init, 1 data order, 2 probe init,
    3 pre-training augmentation (MTT-SSL sets)."""
    return jnp.stack([jax.random.fold_in(jax.random.key(int(s)), purpose) for s in seeds])


def init_encoders(model, keys: jax.Array, image_size) -> tuple[dict, dict]:
    """``(params_S, model_state_S)``: one fresh network per key; the state holds the variable
    collections other than ``params`` (``batch_stats``) and is ``{}`` without BatchNorm."""
    variables = jax.vmap(lambda k: model.init(k, dummy_input(image_size)))(keys)
    state = {name: value for name, value in variables.items() if name != "params"}
    return mesh.shard((variables["params"], state))


def pretrain(model, params, state, data: tuple[np.ndarray, np.ndarray] | StudentRows,
             order_keys: jax.Array,
             *, lr: float, epochs: int, batch_size: int, momentum: float, weight_decay: float,
             objective: tuple | None = None, aug_keys: jax.Array | None = None,
             desc: str | None = None,
             checkpoints: RunCheckpointer | None = None,
             checkpoint_seconds: float = 60.0) -> tuple[dict, dict, np.ndarray]:
    """Train every seed's encoder ``epochs`` epochs on ``data``, ``(images, targets)`` in memory
    or rows read step by step (``data.stream``: :func:`ddjax.mkdt.epochs.student_epochs`);
    returns the parameters, model states and each seed's last-epoch mean loss ``[S]``.
    ``objective`` is a ``(loss_fn, augment)`` pair for ``student_epochs`` (MTT-SSL sets: Barlow
    Twins on two views, drawn from ``aug_keys [S]``); None is MKDT's MSE without augmentation. The
    arrays of ``params`` and ``state`` are donated to the training program: do not read them
    afterwards. With ``checkpoints``, training continues from their latest epoch and saves after an
    epoch when ``checkpoint_seconds`` have passed since the last save (process 0's clock decides)."""
    optimizer = torch_sgd(lr, momentum, weight_decay)
    n = num_rows(data)
    loss_fn, augment = objective or (mse_loss_fn(model.apply), None)
    epoch_fn = student_epochs(loss_fn, optimizer, min(batch_size, n), augment, data)
    params, state, order_keys = mesh.shard((params, state, order_keys))
    opt_state = jax.vmap(optimizer.init)(params)
    loss, start = np.full(order_keys.shape[0], np.nan), 0
    run_state = lambda: {"params": params, "opt": opt_state, **({"state": state} if state else {})}  # noqa: E731
    restored = checkpoints.restore_latest(run_state()) if checkpoints else None
    if restored is not None:
        saved, meta = restored
        params, opt_state, state = saved["params"], saved["opt"], saved.get("state", state)
        start, loss = meta["epoch"], np.asarray(meta["loss"], np.float64)
    bar = progress(total=epochs, initial=start, desc=desc or "pre-train")
    saved_at = time.monotonic()
    for epoch in range(start, epochs):
        perms = epoch_permutations(order_keys, epoch, n)
        epoch_aug = order_keys if aug_keys is None else jax.vmap(
            lambda k: jax.random.fold_in(k, epoch))(aug_keys)
        params, state, opt_state, loss = epoch_fn((params, state, opt_state), perms, epoch_aug)
        loss = mesh.fetch(loss)  # waits for the epoch, so the progress bar's ETA is true
        if checkpoints and mesh.primary_says(time.monotonic() - saved_at >= checkpoint_seconds):
            checkpoints.save(epoch + 1, run_state(), {"epoch": epoch + 1, "loss": loss.tolist()})
            saved_at = time.monotonic()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.mean():.4g}")
    bar.close()
    return params, state, loss


@functools.lru_cache(maxsize=16)
def _feature_fn(model, train: bool) -> Callable:
    """Jitted ``(params_S, state_S, x [S, B, ...]) -> (features [S, B, D], state_S)``; the
    features replicated, so that every process can read them."""

    def one(params, state, x):
        variables = {"params": params, **state}
        if train and state:
            z, state = model.apply(variables, x, train=True, mutable=list(state), method="features")
            return z, state
        return model.apply(variables, x, method="features"), state

    def every_seed(params, state, x):
        z, state = jax.vmap(one)(params, state, x)
        return jax.lax.with_sharding_constraint(z, mesh.replicated()), state

    return jax.jit(every_seed)


def features(model, params, state, reader: LoadedSplit | SplitReader, indices: np.ndarray,
             prepare: Prepare, *, batch_size: int,
             train_mode: bool = False) -> tuple[np.ndarray, dict]:
    """Features ``[S, n, D]`` of rows ``indices[s]`` of ``reader`` (a split loaded whole, or read
    from the source with ``data.stream``) under seed ``s``'s encoder (``indices`` is ``[S, n]``,
    or ``[n]`` for every seed); ``prepare`` turns stored images into network inputs. Eval mode
    pads the last batch (one compiled shape); ``train_mode`` (BatchNorm networks) runs exact
    consecutive batches and returns the updated states."""
    seeds = jax.tree.leaves(params)[0].shape[0]
    indices = np.broadcast_to(np.asarray(indices), (seeds, np.shape(indices)[-1]))
    train = train_mode and bool(state)
    fn = _feature_fn(model, train)

    def take(idx):
        x = prepare(reader.read(indices[:, idx].reshape(-1))[0])
        return np.asarray(x, np.float32).reshape(seeds, len(idx), *x.shape[1:])

    params, state = mesh.shard((params, state))

    def run(x):
        nonlocal state
        z, new_state = fn(params, state, mesh.shard(x))
        if train:
            state = new_state
        return z

    z = map_batches(run, indices.shape[1], batch_size, take, axis=1, pad=not train)
    return np.asarray(z, np.float32), state
