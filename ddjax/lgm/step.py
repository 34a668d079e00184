"""Linear gradient matching: the pure, jittable step of LGM's distillation.

Each step draws K random linear probes (K = 1 is the reference), takes the probes' gradients of
the mean cross-entropy on an augmented real batch (closed form or ``jax.grad``, same values) and
on ``augs`` augmented copies of the decoded synthetic set, and minimises the mean over probes of
``1 - cos(g_real, g_syn)`` with Adam on the pyramid levels. Only a VJP through the frozen
backbone is needed; ``chunk_size`` > 0 computes the same meta-gradient in two exact passes over
chunks, holding one chunk's activations. See docs/lgm.md#meta-loss.

On a mesh (``LgmProblem.constrain``; the stage passes ``ddjax.mesh.constrain_batch``) the rows of
the augmented real and synthetic batches are split over the data axis; the probes, the levels and
the backbone stay replicated, and the probe gradients' sums over rows become all-reduces.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ddjax.lgm.augment import augment, sample_aug, take_rows
from ddjax.lgm.pyramid import decode
from ddjax.errors import DdjaxError

PROBE_STD = 0.01
COSINE_EPS = 1e-8
PROBE_GRADS = ("closed_form", "autodiff")


class Probes(NamedTuple):
    """K linear probes: W [K, C, D], b [K, C]."""

    W: jax.Array
    b: jax.Array


def draw_probes(key: jax.Array, num_probes: int, num_classes: int, dim: int) -> Probes:
    """Fresh probes as the reference draws them: W ~ N(0, 0.01^2), b = 0."""
    W = PROBE_STD * jax.random.normal(key, (num_probes, num_classes, dim), jnp.float32)
    return Probes(W, jnp.zeros((num_probes, num_classes), jnp.float32))


def probe_grad_closed_form(W: jax.Array, b: jax.Array, Z: jax.Array, Y: jax.Array) -> jax.Array:
    """[vec(dL/dW), dL/db] of the mean cross-entropy of logits Z W^T + b against one-hot Y."""
    G = (jax.nn.softmax(Z @ W.T + b, axis=-1) - Y) / Z.shape[0]
    return jnp.concatenate([(G.T @ Z).reshape(-1), G.sum(axis=0)])


def mean_cross_entropy(W: jax.Array, b: jax.Array, Z: jax.Array, Y: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(Z @ W.T + b, axis=-1), axis=-1))


def probe_grad_autodiff(W: jax.Array, b: jax.Array, Z: jax.Array, Y: jax.Array) -> jax.Array:
    """The same vector as ``probe_grad_closed_form``, by ``jax.grad``."""
    dW, db = jax.grad(mean_cross_entropy, argnums=(0, 1))(W, b, Z, Y)
    return jnp.concatenate([dW.reshape(-1), db])


def probe_grad_fn(name: str) -> Callable:
    if name == "closed_form":
        return probe_grad_closed_form
    if name == "autodiff":
        return probe_grad_autodiff
    raise DdjaxError(f"unknown probe gradient {name!r}; use one of {', '.join(PROBE_GRADS)}")


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = COSINE_EPS) -> jax.Array:
    """1 - cos(a, b), each norm clamped below at ``eps``."""
    norms = jnp.maximum(jnp.linalg.norm(a), eps) * jnp.maximum(jnp.linalg.norm(b), eps)
    return 1.0 - jnp.dot(a, b) / norms


def matching_loss(probes: Probes, g_real_KP: jax.Array, Z_syn: jax.Array, Y_syn: jax.Array,
                  probe_grad: Callable = probe_grad_closed_form) -> jax.Array:
    """Mean over probes of 1 - cos(g_real_k, g_syn_k(Z_syn))."""
    g_syn = jax.vmap(lambda W, b: probe_grad(W, b, Z_syn, Y_syn))(probes.W, probes.b)
    return jnp.mean(jax.vmap(cosine_distance)(g_real_KP, g_syn))


def chunk_rows(n: int, chunk: int) -> jax.Array:
    """[num_chunks, chunk] row ids covering 0..n-1, the padding rows repeating row n-1."""
    chunk = n if chunk <= 0 else min(chunk, n)
    count = -(-n // chunk)
    return jnp.minimum(jnp.arange(count * chunk), n - 1).reshape(count, chunk)


@dataclasses.dataclass(frozen=True)
class LgmProblem:
    """Everything static about a distillation: the backbone function and its normalisation, sizes,
    augmentation, probes and chunking. ``features(variables, x)`` maps normalised NHWC images at
    ``crop_res`` to [N, feature_dim]. ``constrain(x)``, when given, is applied inside ``jit`` to
    every batch of images before and after augmentation (``ddjax.mesh.constrain_batch``: rows
    split over the mesh's data axis); None leaves the layout to XLA. Hashable (the functions by
    identity)."""

    features: Callable[[Any, jax.Array], jax.Array]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    num_classes: int
    crop_res: int
    syn_res: int
    augs: int = 10
    aug_mode: str = "standard"
    decorrelate: bool = True
    num_probes: int = 1
    probe_grad: str = "closed_form"
    chunk_size: int = 0
    constrain: Callable[[jax.Array], jax.Array] | None = None

    def split_rows(self, x: jax.Array) -> jax.Array:
        """``x`` with its leading (row) axis laid out by ``constrain`` (unchanged without one)."""
        return x if self.constrain is None else self.constrain(x)

    def embed(self, variables, x01: jax.Array) -> jax.Array:
        mean, std = jnp.asarray(self.mean, x01.dtype), jnp.asarray(self.std, x01.dtype)
        return self.features(variables, (x01 - mean) / std)

    def view(self, x01: jax.Array, params) -> jax.Array:
        """The augmented ``crop_res`` view of the rows ``params`` were drawn for (rows laid out
        by ``constrain``, so the augmentation and the backbone run split over the mesh)."""
        view = augment(self.split_rows(x01), params, self.crop_res,
                       noise=self.aug_mode == "standard")
        return self.split_rows(view)

    def decode(self, levels) -> jax.Array:
        return decode(levels, self.syn_res, self.decorrelate)


def real_gradients(problem: LgmProblem, variables, probes: Probes, x_real01: jax.Array,
                   y_real: jax.Array, key: jax.Array) -> jax.Array:
    """[K, C*D + C] probe gradients of the (augmented) real batch; no graph."""
    n = x_real01.shape[0]
    params = sample_aug(key, n, problem.aug_mode)
    if 0 < problem.chunk_size < n:
        def chunk_features(rows):
            return problem.embed(variables, problem.view(x_real01[rows], take_rows(params, rows)))

        Z = jax.lax.map(chunk_features, chunk_rows(n, problem.chunk_size))
        Z = Z.reshape(-1, Z.shape[-1])[:n]
    else:   # one chunk: the whole batch, its rows split over the mesh by ``constrain``
        Z = problem.embed(variables, problem.view(x_real01, params))
    Z = jax.lax.stop_gradient(Z)
    Y = jax.nn.one_hot(y_real, problem.num_classes, dtype=jnp.float32)
    grad = probe_grad_fn(problem.probe_grad)
    return jax.vmap(lambda W, b: grad(W, b, Z, Y))(probes.W, probes.b)


def _syn_targets(problem: LgmProblem, syn_labels: jax.Array) -> jax.Array:
    labels = jnp.tile(syn_labels, problem.augs)
    return jax.nn.one_hot(labels, problem.num_classes, dtype=jnp.float32)


def meta_loss(problem: LgmProblem, levels, variables, probes: Probes, g_real: jax.Array,
              syn_labels: jax.Array, key: jax.Array) -> jax.Array:
    """The meta-loss as one differentiable function of the levels (the unchunked path)."""
    x_syn = problem.decode(levels)
    x_rep = jnp.tile(x_syn, (problem.augs, 1, 1, 1))        # row r is image r % N, copy r // N
    params = sample_aug(key, x_rep.shape[0], problem.aug_mode)
    Z = problem.embed(variables, problem.view(x_rep, params))
    return matching_loss(probes, g_real, Z, _syn_targets(problem, syn_labels),
                         probe_grad_fn(problem.probe_grad))


def meta_loss_and_grad_chunked(problem: LgmProblem, levels, variables, probes: Probes,
                               g_real: jax.Array, syn_labels: jax.Array, key: jax.Array):
    """(meta-loss, d/dlevels), exactly as ``meta_loss`` but holding one chunk's activations."""
    n = syn_labels.shape[0]
    total = n * problem.augs
    params = sample_aug(key, total, problem.aug_mode)
    rows = chunk_rows(total, problem.chunk_size)
    x_syn, decode_vjp = jax.vjp(problem.decode, levels)

    def chunk_features(x, r):
        return problem.embed(variables, problem.view(x[r % n], take_rows(params, r)))

    Z = jax.lax.map(lambda r: chunk_features(x_syn, r), rows)
    Z = Z.reshape(-1, Z.shape[-1])[:total]
    targets = _syn_targets(problem, syn_labels)
    grad = probe_grad_fn(problem.probe_grad)
    loss, dZ = jax.value_and_grad(lambda z: matching_loss(probes, g_real, z, targets, grad))(Z)
    dZ = jnp.pad(dZ, ((0, rows.size - total), (0, 0))).reshape(*rows.shape, -1)

    def pull_back(acc, inputs):
        r, dz = inputs
        _, vjp = jax.vjp(lambda x: chunk_features(x, r), x_syn)
        return acc + vjp(dz)[0], None

    dX, _ = jax.lax.scan(pull_back, jnp.zeros_like(x_syn), (rows, dZ))
    (dlevels,) = decode_vjp(dX)
    return loss, dlevels


def meta_loss_and_grad(problem: LgmProblem, levels, variables, probes: Probes, g_real: jax.Array,
                       syn_labels: jax.Array, key: jax.Array):
    """(meta-loss, d/dlevels): chunked when ``chunk_size`` is below the replicated batch size."""
    total = syn_labels.shape[0] * problem.augs
    if 0 < problem.chunk_size < total:
        return meta_loss_and_grad_chunked(problem, levels, variables, probes, g_real, syn_labels,
                                          key)
    return jax.value_and_grad(lambda lv: meta_loss(problem, lv, variables, probes, g_real,
                                                   syn_labels, key))(levels)


def lgm_grads(problem: LgmProblem, levels, variables, x_real01: jax.Array, y_real: jax.Array,
              syn_labels: jax.Array, key: jax.Array):
    """One step's (meta-loss, d/dlevels). The step's key (``fold_in(base, step)`` in the stage)
    gives the probes (fold_in 0), the real augmentation (1) and the synthetic augmentation (2)."""
    k_probe, k_real, k_syn = (jax.random.fold_in(key, i) for i in range(3))
    probes = draw_probes(k_probe, problem.num_probes, problem.num_classes, problem.feature_dim)
    g_real = real_gradients(problem, variables, probes, x_real01, y_real, k_real)
    return meta_loss_and_grad(problem, levels, variables, probes, g_real, syn_labels, k_syn)


def lgm_optimizer(lr: float) -> optax.GradientTransformation:
    """Adam as the reference uses it on the levels: betas (0.9, 0.999), eps 1e-8, no decay."""
    return optax.adam(lr)


@functools.lru_cache(maxsize=8)
def make_train_step(problem: LgmProblem, lr: float) -> Callable:
    """A jitted ``step(levels, opt_state, mask, variables, x_real_uint8, y_real, syn_labels, key)``
    -> ``(levels, opt_state, loss)``; ``mask`` [L] zeroes the gradients of inactive levels.
    ``key`` is the step's key, or a pair ``(base_key, step)`` whose ``fold_in`` (the same key) is
    then taken on the device, sparing the host a dispatch per step (what the stage passes).
    Cached per (problem, lr): runs in one process with equal settings share one compilation."""
    optimizer = lgm_optimizer(lr)

    @jax.jit
    def step(levels, opt_state, mask, variables, x_real_u8, y_real, syn_labels, key):
        if isinstance(key, tuple):
            key = jax.random.fold_in(*key)
        x_real = problem.split_rows(x_real_u8).astype(jnp.float32) / 255.0
        loss, grads = lgm_grads(problem, levels, variables, x_real, y_real, syn_labels, key)
        grads = [g * mask[i] for i, g in enumerate(grads)]
        updates, opt_state = optimizer.update(grads, opt_state, levels)
        return optax.apply_updates(levels, updates), opt_state, loss

    return step
