"""Linear probes on a frozen backbone, as LGM evaluates image sets.

A probe (W ~ N(0, 0.01^2), b = 0) is trained with Adam on mean cross-entropy, the learning rate
on a per-epoch cosine to 0, on images augmented and embedded every epoch or on precomputed
features; several seeds train at once (vmapped, one backbone pass for all; the seeds split over
the mesh's data axis when they divide over it, docs/scaling.md). The figures are test top-1/top-5
after the final epoch. Batching, seeding and schedule: docs/lgm.md#evaluation.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax import mesh
from ddjax.lgm.step import PROBE_STD, Probes
from ddjax.lgm.augment import augment, center_view, sample_aug
from ddjax.data.stream import LoadedSplit, SplitReader, in_memory
from ddjax.runlog import progress
from ddjax.ssl.encode import map_rows


def probe_lr(lr_per_256: float, batch_size: int) -> float:
    """The reference's linear scaling rule (one device): lr_per_256 * batch / 256."""
    return lr_per_256 * batch_size / 256.0


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=0) at ``epoch``."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@functools.lru_cache(maxsize=32)
def make_embedder(backbone, mode: str | None = "basic") -> Callable:
    """``embed(variables, x01 [S, B, H, W, 3], keys [S]) -> [S, B, D]``: per-seed augmentation,
    then one backbone pass over all rows. ``mode=None`` embeds the center views instead."""
    res = backbone.resolution

    def embed(variables, x, keys):
        seeds, batch = x.shape[:2]
        if mode is None:
            views = center_view(x.reshape(seeds * batch, *x.shape[2:]), res)
        else:
            views = jax.vmap(lambda xs, k: augment(xs, sample_aug(k, batch, mode), res,
                                                         noise=mode == "standard"))(x, keys)
            views = views.reshape(seeds * batch, res, res, x.shape[-1])
        mean, std = jnp.asarray(backbone.mean, x.dtype), jnp.asarray(backbone.std, x.dtype)
        z = backbone.features(variables, (views - mean) / std)
        return jax.lax.stop_gradient(z).reshape(seeds, batch, -1)

    return embed


def _masked_ce(W, b, Z, labels, mask, num_classes):
    logp = jax.nn.log_softmax(Z @ W.T + b, axis=-1)
    nll = -jnp.sum(jax.nn.one_hot(labels, num_classes) * logp, axis=-1)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.lru_cache(maxsize=32)
def make_probe_epoch_fn(embed: Callable | None, n: int, batch_size: int,
                        num_classes: int) -> Callable:
    """A jitted ``epoch(probes, opt_state, variables, rows, labels, seed_keys [S], epoch, step0,
    lr)`` -> ``(probes, opt_state, mean loss [S])``. ``rows`` are images (with ``embed``) or
    features (``embed=None``) on the device; uint8 images are scaled to [0, 1]. Cached per
    arguments, so sets of one size share one compilation."""
    steps = -(-n // batch_size)
    adam = optax.scale_by_adam()

    @jax.jit
    def epoch_fn(probes, opt_state, variables, rows, labels, seed_keys, epoch, step0, lr):
        order_keys = jax.vmap(
            lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), epoch))(seed_keys)
        perms = jax.vmap(lambda k: jax.random.permutation(k, n))(order_keys)              # [S, n]
        position = jnp.arange(steps * batch_size)
        picks = perms[:, jnp.minimum(position, n - 1)]
        picks = picks.reshape(-1, steps, batch_size)                       # [S, steps, B]
        mask = (position < n).astype(jnp.float32).reshape(steps, batch_size)

        def one_step(carry, inputs):
            probes, opt_state = carry
            pick, m, t = inputs                                                           # [S, B]
            x = rows[pick]
            if embed is None:
                Z = x
            else:
                if x.dtype == jnp.uint8:
                    x = x.astype(jnp.float32) / 255.0
                aug_keys = jax.vmap(
                    lambda k: jax.random.fold_in(jax.random.fold_in(k, 2), t))(seed_keys)
                Z = embed(variables, x, aug_keys)
            y = labels[pick]
            loss, grads = jax.vmap(jax.value_and_grad(
                lambda p, z, yy: _masked_ce(p.W, p.b, z, yy, m, num_classes)))(probes, Z, y)
            updates, opt_state = jax.vmap(adam.update)(grads, opt_state)
            probes = jax.tree.map(lambda p, u: p - lr * u, probes, updates)
            return (probes, opt_state), loss

        inputs = (jnp.swapaxes(picks, 0, 1), mask, step0 + jnp.arange(steps))
        (probes, opt_state), losses = jax.lax.scan(one_step, (probes, opt_state), inputs)
        return probes, opt_state, losses.mean(axis=0)

    return epoch_fn


def init_probes(seeds, num_classes: int, dim: int) -> Probes:
    """One fresh probe per seed, W ~ N(0, 0.01^2) from fold_in(key(seed), 0), b = 0."""
    W = jnp.stack([PROBE_STD * jax.random.normal(jax.random.fold_in(jax.random.key(s), 0),
                                                  (num_classes, dim), jnp.float32) for s in seeds])
    return Probes(W, jnp.zeros((len(seeds), num_classes), jnp.float32))


def train_probes(rows, labels, seeds, *, num_classes: int, dim: int, epochs: int, batch_size: int,
                 lr: float, embed: Callable | None = None, variables=None, desc: str | None = None
                 ) -> tuple[Probes, np.ndarray]:
    """Train one probe per seed on ``rows`` (images with ``embed``, else features); returns the
    probes [S, ...] and the last epoch's mean training loss per seed."""
    n = len(labels)
    batch_size = min(batch_size, n)
    epoch_fn = make_probe_epoch_fn(embed, n, batch_size, num_classes)
    probes, seed_keys = mesh.shard((init_probes(seeds, num_classes, dim),
                                    jnp.stack([jax.random.key(s) for s in seeds])))
    opt_state = jax.vmap(optax.scale_by_adam().init)(probes)
    rows, labels, variables = mesh.replicate((np.asarray(rows), np.asarray(labels, np.int32),
                                              variables))
    steps = -(-n // batch_size)
    loss = np.full(len(seeds), np.nan)
    bar = progress(total=epochs, desc=desc) if desc else None
    for epoch in range(epochs):
        probes, opt_state, loss = epoch_fn(probes, opt_state, variables, rows, labels, seed_keys,
                                           epoch, epoch * steps, cosine_lr(lr, epoch, epochs))
        if bar is not None:  # an epoch counts when it is done, so the rate and ETA are true
            jax.block_until_ready(loss)
            bar.update(1)
    if bar is not None:
        bar.close()
    return probes, mesh.fetch(loss)


def topk_accuracy(probes: Probes, features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[S] fraction of test rows whose label is among each probe's top-k logits."""
    logits = jnp.einsum("nd,scd->snc", jnp.asarray(features), probes.W) + probes.b[:, None, :]
    top = jax.lax.top_k(logits, k)[1]
    hit = jnp.any(top == jnp.asarray(labels)[None, :, None], axis=-1)
    return mesh.fetch(jnp.mean(hit, axis=-1))


def embed_images(backbone, images, batch_size: int = 500, desc: str | None = None) -> np.ndarray:
    """Eval-view features [N, D] (center view at the backbone's resolution, no augmentation) of
    uint8 or [0, 1] float images, in order (:func:`embed_rows` of images in memory)."""
    return embed_rows(backbone, in_memory(np.asarray(images)), np.arange(len(images)), batch_size,
                      desc)


def embed_rows(backbone, reader: LoadedSplit | SplitReader, indices, batch_size: int = 500,
               desc: str | None = None) -> np.ndarray:
    """:func:`embed_images` of ``reader.read(indices)``'s images, each process reading only its
    rows of each batch (with ``data.stream`` from the source, never the whole split); every batch
    (split over the data axis) is padded to ``batch_size`` so one program per backbone and image
    shape serves all calls."""
    embed, variables = _center_embedder(backbone), mesh.replicate(backbone.variables)
    return map_rows(lambda x: embed(variables, x), reader, indices,
                    mesh.divisible_batch(max(1, batch_size)), desc=desc).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _center_embedder(backbone) -> Callable:
    """One compiled eval-view embedder per backbone object (Backbone hashes by identity)."""
    inner = make_embedder(backbone, mode=None)

    @jax.jit
    def embed(variables, x):
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        return jax.lax.with_sharding_constraint(inner(variables, x[None], None)[0],
                                                mesh.replicated())

    return embed
