"""Trajectory matching (MTT, as MKDT uses it) as pure functions of pytrees.

``unroll`` trains a student from an expert's ``θ_s`` for N plain-SGD steps at the learnable lr
(a ``lax.scan`` with a ``jax.checkpoint``-ed body); ``match_loss`` is the normalised distance
‖θ_N − θ*‖² / ‖θ_s − θ*‖²; ``make_outer_step`` differentiates it through the whole unroll with
respect to the images, targets and lr. Minibatches are padded to ``batch_syn`` with a 0/1 mask
(exact without cross-sample statistics). The inner losses of the three modes are here; MTT-SSL
passes its two-view augmentation as the ``augment`` hook. See docs/mkdt.md#trajectory-matching.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ddjax.mkdt.experts import barlow_twins_of_views
from ddjax.ssl.losses import BARLOW_TWINS_LAMBDA

Params = Any
InnerLoss = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def masked_mse(apply_fn: Callable) -> InnerLoss:
    """MKDT's inner loss: MSE to the targets, mean over (real batch members) × output dims."""

    def loss(params, images, targets, mask):
        per_example = jnp.mean((apply_fn({"params": params}, images) - targets) ** 2, axis=-1)
        return jnp.sum(per_example * mask) / jnp.sum(mask)

    return loss


def masked_cross_entropy(apply_fn: Callable) -> InnerLoss:
    """Classic MTT's inner loss: cross-entropy to label distributions (one-hot rows give the
    reference's hard-label cross-entropy exactly), mean over real members."""

    def loss(params, images, label_probs, mask):
        logits = apply_fn({"params": params}, images)
        per_example = optax.softmax_cross_entropy(logits, label_probs)
        return jnp.sum(per_example * mask) / jnp.sum(mask)

    return loss


def masked_barlow_twins(apply_fn: Callable, lambd: float = BARLOW_TWINS_LAMBDA) -> InnerLoss:
    """MTT-SSL's inner loss: the Barlow Twins expert loss (``ddjax.mkdt.experts``) on the two
    views ``[2, B, H, W, C]`` that the experts' ``two_views`` augmentation made of the minibatch,
    with padded members left out of the batch statistics. There are no targets (the unroll
    passes None)."""

    def loss(params, views_2B, targets, mask):
        del targets
        return barlow_twins_of_views(apply_fn, params, {}, views_2B, lambd, mask)[0]

    return loss


def minibatch_loss(inner_loss: InnerLoss, images: jax.Array, targets: jax.Array | None, *,
                   augment: Augment | None = None, aug_key: jax.Array | None = None, inner_dtype=None,
                   constrain: Callable[[jax.Array], jax.Array] | None = None):
    """``loss(params, (idx, mask, s))``: the inner loss on step s's synthetic minibatch:
    ``images[idx]`` (transformed by ``augment(fold_in(aug_key, s), x)`` when given), ``targets[idx]``
    (None for MTT-SSL) and the 0/1 ``mask``, computed in ``inner_dtype`` (e.g. ``jnp.bfloat16``)
    when given while the parameters stay float32; None keeps float32 throughout (the reference).
    ``constrain`` places the minibatch (``ddjax.mesh.constrain_batch``: split over devices)."""

    def loss(params, step_inputs):
        idx, mask, s = step_inputs
        x, y = images[idx], None if targets is None else targets[idx]
        if constrain is not None:
            x, y, mask = constrain(x), None if y is None else constrain(y), constrain(mask)
        if augment is not None:
            x = augment(jax.random.fold_in(aug_key, s), x)
        if inner_dtype is None:
            return inner_loss(params, x, y, mask)
        low = lambda t: None if t is None else jax.tree.map(lambda a: a.astype(inner_dtype), t)
        return inner_loss(low(params), low(x), low(y), low(mask))

    return loss


def inner_step(inner_loss: InnerLoss, images: jax.Array, targets: jax.Array | None, **options):
    """``step(params, lr, (idx, mask, s))``: one student step ``θ − lr·∇L`` on step s's minibatch
    (``options`` as ``minibatch_loss``)."""
    grad_fn = jax.grad(minibatch_loss(inner_loss, images, targets, **options))

    def step(params, lr, step_inputs):
        grads = grad_fn(params, step_inputs)
        return jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), params, grads)

    return step


def unroll_inputs(batch_idx_SB: jax.Array, mask_SB: jax.Array):
    """The scanned inputs ``(idx, mask, s)`` of an unroll over ``[S, B]`` indices and mask."""
    return batch_idx_SB, mask_SB, jnp.arange(batch_idx_SB.shape[0])


def unroll(inner_loss: InnerLoss, params0: Params, images: jax.Array, targets: jax.Array | None,
           lr: jax.Array, batch_idx_SB: jax.Array, mask_SB: jax.Array, *,
           remat: bool = True, inner_dtype=None, augment: Augment | None = None,
           aug_key: jax.Array | None = None, constrain=None, backprop_steps: int = 0) -> Params:
    """``θ_N`` after ``S = len(batch_idx_SB)`` steps ``θ ← θ − lr·∇L(θ; X[idx], Y[idx])`` (see
    ``minibatch_loss`` for the targets, ``augment``, ``inner_dtype`` and ``constrain``), as a
    ``lax.scan`` whose body is ``jax.checkpoint``-ed when ``remat``. ``backprop_steps`` = K > 0
    (an option; 0 is the reference) lets gradients flow through the last K steps only: the
    parameters after the first S − K are a constant to the meta-gradient (truncated backprop)."""
    step = inner_step(inner_loss, images, targets, augment=augment, aug_key=aug_key,
                      inner_dtype=inner_dtype, constrain=constrain)

    def body(params, step_inputs):
        return step(params, lr, step_inputs), None

    scan_body = jax.checkpoint(body) if remat else body
    inputs = unroll_inputs(batch_idx_SB, mask_SB)
    cut = batch_idx_SB.shape[0] - backprop_steps if 0 < backprop_steps < batch_idx_SB.shape[0] else 0
    params = params0
    if cut:
        head = jax.tree.map(lambda a: a[:cut], inputs)
        params = jax.lax.stop_gradient(jax.lax.scan(scan_body, params, head)[0])
        inputs = jax.tree.map(lambda a: a[cut:], inputs)
    params_N, _ = jax.lax.scan(scan_body, params, inputs)
    return params_N


def squared_distance(a: Params, b: Params) -> jax.Array:
    """Σ over every parameter of (a − b)²."""
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def match_loss(params_N: Params, params_start: Params, params_target: Params) -> jax.Array:
    """‖θ_N − θ*‖² / ‖θ_s − θ*‖²: 1 when the student did not move, 0 when it reached θ*."""
    return squared_distance(params_N, params_target) / squared_distance(params_start, params_target)


def make_meta_loss(inner_loss: InnerLoss, *, remat: bool = True, inner_dtype=None,
                   augment: Augment | None = None, constrain=None, backprop_steps: int = 0):
    """``meta_loss(syn, start, target, idx_SB, mask_SB, aug_key)``; ``syn`` = {images, targets, lr},
    without ``targets`` for inner losses that have none (MTT-SSL)."""

    def meta_loss(syn, params_start, params_target, batch_idx_SB, mask_SB, aug_key=None):
        params_N = unroll(inner_loss, params_start, syn["images"], syn.get("targets"), syn["lr"],
                          batch_idx_SB, mask_SB, remat=remat, inner_dtype=inner_dtype,
                          augment=augment, aug_key=aug_key, constrain=constrain,
                          backprop_steps=backprop_steps)
        return match_loss(params_N, params_start, params_target)

    return meta_loss


def outer_optimizer(lr_images: float, lr_targets: float, lr_lr: float, momentum: float = 0.5,
                    clip_norm: float = 0.0) -> optax.GradientTransformation:
    """The reference's three ``torch.optim.SGD(momentum=0.5)``: one per learnable, no clipping.

    A learnable with lr 0 (e.g. fixed labels in classic MTT) is left untouched. ``clip_norm`` > 0
    (an option, not the reference) clips each learnable's meta-gradient to that norm first: long
    unrolls can make the exact meta-gradient explode (see ``docs`` in experiments/README.md).
    """
    def sgd(lr):
        if not lr:
            return optax.set_to_zero()
        step = optax.sgd(lr, momentum=momentum)
        return optax.chain(optax.clip_by_global_norm(clip_norm), step) if clip_norm else step

    # Labels from the learnables present: a synthetic set without targets (MTT-SSL) leaves the
    # targets' transform unused.
    return optax.multi_transform({"images": sgd(lr_images), "targets": sgd(lr_targets), "lr": sgd(lr_lr)},
                                 lambda syn: {name: name for name in syn})


def make_outer_step(meta_loss: Callable, optimizer: optax.GradientTransformation):
    """Build the jitted ``step(syn, opt_state, starts, targets, idx, mask, aug_keys)``.

    ``starts``/``targets`` (and ``idx``/``mask``/``aug_keys``) carry a leading axis of E experts
    matched in this step (E = 1 is the reference); their meta-gradients are averaged. Returns the
    new ``syn`` and optimiser state, the mean loss and the gradient of each learnable.
    """

    def mean_loss(syn, starts, targets, idx, mask, aug_keys):
        losses = jax.vmap(meta_loss, in_axes=(None, 0, 0, 0, 0, 0))(syn, starts, targets, idx, mask, aug_keys)
        return jnp.mean(losses)

    def step(syn, opt_state, starts, targets, idx, mask, aug_keys):
        loss, grads = jax.value_and_grad(mean_loss)(syn, starts, targets, idx, mask, aug_keys)
        updates, opt_state = optimizer.update(grads, opt_state, syn)
        return optax.apply_updates(syn, updates), opt_state, loss, grads

    return jax.jit(step)
