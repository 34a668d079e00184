"""Training students on real data as pure, jitted functions, vmapped over a leading axis.

E networks (experts, or evaluation encoders, one per seed) train in one compiled program: their
parameters and optimiser states carry a leading axis of size E, each has its own initialisation
and data order, and one epoch is a ``lax.scan`` over minibatches with PyTorch's SGD semantics.
The losses are KD (MSE to representations), cross-entropy, and Barlow Twins on two views.
See docs/mkdt.md#experts.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ddjax.ssl.losses import BARLOW_TWINS_LAMBDA, barlow_twins_loss

Params = Any
ModelState = dict
LossFn = Callable[[Params, ModelState, jax.Array, jax.Array], tuple[jax.Array, ModelState]]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def apply_train(apply_fn: Callable, params, model_state: ModelState, images):
    """The network's output in training mode and its updated ``model_state``: batch statistics
    and updated running statistics when it has BatchNorm, a plain forward pass otherwise."""
    if not model_state:
        return apply_fn({"params": params}, images), model_state
    return apply_fn({"params": params, **model_state}, images, train=True, mutable=list(model_state))


def mse_loss_fn(apply_fn: Callable) -> LossFn:
    """Mean over batch × output dims of the squared error to target representations."""

    def loss(params, model_state, images, targets):
        out, model_state = apply_train(apply_fn, params, model_state, images)
        return jnp.mean((out - targets) ** 2), model_state

    return loss


def cross_entropy_loss_fn(apply_fn: Callable) -> LossFn:
    """Mean cross-entropy to integer labels."""

    def loss(params, model_state, images, labels):
        logits, model_state = apply_train(apply_fn, params, model_state, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), model_state

    return loss


def two_views(augment: Augment) -> Augment:
    """``views(key, x_BHWC) -> views_2BHWC``: two independent draws of ``augment`` on the same
    batch, with ``fold_in(key, 0)`` and ``fold_in(key, 1)``, stacked on a new leading axis."""

    def views(key, images):
        return jnp.stack([augment(jax.random.fold_in(key, v), images) for v in (0, 1)])

    return views


def barlow_twins_of_views(apply_fn: Callable, params, model_state: ModelState, views_2B,
                          lambd: float = BARLOW_TWINS_LAMBDA, mask_B=None):
    """Barlow Twins between the student's outputs on the two views (row b of each is image b),
    and the updated ``model_state``. ``mask_B`` (0/1) leaves padded batch members out of the
    batch statistics (``ddjax.ssl.losses.barlow_twins_loss``; scale 1, eps 1e-5)."""
    two, batch = views_2B.shape[:2]
    if two != 2:
        raise ValueError(f"expected two views stacked on axis 0, got shape {views_2B.shape}")
    out, model_state = apply_train(apply_fn, params, model_state,
                                   views_2B.reshape((2 * batch,) + views_2B.shape[2:]))
    return barlow_twins_loss(out[:batch], out[batch:], lambd, mask_B=mask_B), model_state


def barlow_twins_loss_fn(apply_fn: Callable, lambd: float = BARLOW_TWINS_LAMBDA) -> LossFn:
    """Barlow Twins on a pair of views made by a ``two_views`` augmentation; targets ignored.

    The loss is a batch statistic, not a mean over examples, so ``make_student_epoch``'s epoch loss is
    the mean of the minibatch losses weighted by minibatch size."""

    def loss(params, model_state, views_2B, targets):
        del targets
        return barlow_twins_of_views(apply_fn, params, model_state, views_2B, lambd)

    return loss


def torch_sgd(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay)``: decay joins the gradient before momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr, momentum=momentum or None))


def expert_keys(seed: int, experts: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-expert (init, data-order, augmentation) keys, each derived from the expert's index
    alone, so an expert's trajectory does not depend on which experts train with it."""
    base = [jax.random.fold_in(jax.random.key(seed), e) for e in experts]
    return tuple(jnp.stack([jax.random.fold_in(k, purpose) for k in base]) for purpose in range(3))


def kept_epochs(epochs: int, keep: int) -> list[int]:
    """Snapshots to store: 0..epochs, or 0..keep when ``keep`` >= 0 (what distillation reads)."""
    last = epochs if keep < 0 else min(keep, epochs)
    return list(range(last + 1))


def epoch_permutations(keys_E: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    """Each expert's data order for ``epoch``: a permutation from ``fold_in(expert_key, epoch)``."""
    return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), num_examples))(keys_E)


def _student_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                  augment: Augment | None):
    """One SGD step of every network on its own minibatch (vmapped over the leading axis)."""

    def one_step(params, model_state, opt_state, images, targets, key):
        if augment is not None:
            images = augment(key, images)
        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, images, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

    return jax.vmap(one_step)


def _step_keys(aug_keys_E: jax.Array, t) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(aug_keys_E)


def make_student_epoch(loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
                       augment: Augment | None = None):
    """Build ``epoch(params_E, state_E, opt_E, images, targets, perm_EN, aug_keys_E)
    -> (params_E, state_E, opt_E, loss_E)``.

    ``images``/``targets`` are the whole training set (shared by all experts); ``perm_EN`` holds
    each expert's example order, cut into batches of ``batch_size`` with the last partial batch
    kept (its loss the mean over its own members), as the reference's data loader does.
    ``augment(key, batch)`` (e.g. DSA for classic MTT experts) is applied to every minibatch with
    ``fold_in(aug_keys_E[e], step)`` and the loss receives what it returns (Barlow Twins experts:
    the ``two_views`` pair); None (MKDT) skips it and ignores ``aug_keys_E``. ``state_E`` is each
    network's ``model_state`` (``{}`` without BatchNorm). ``loss_E`` is each expert's
    per-example mean loss over the epoch.
    """
    step_E = _student_step(loss_fn, optimizer, augment)

    def gather(data, idx_EB):
        return jax.vmap(lambda idx: data[idx])(idx_EB)

    def epoch(params_E, state_E, opt_E, images, targets, perm_EN, aug_keys_E):
        num_examples = perm_EN.shape[1]
        full = num_examples // batch_size
        body_idx = perm_EN[:, : full * batch_size].reshape(perm_EN.shape[0], full, batch_size)

        def body(carry, inputs):
            t, idx_EB = inputs
            *carry, loss = step_E(*carry, gather(images, idx_EB), gather(targets, idx_EB),
                                  _step_keys(aug_keys_E, t))
            return tuple(carry), loss

        (params_E, state_E, opt_E), losses_TE = jax.lax.scan(
            body, (params_E, state_E, opt_E), (jnp.arange(full), jnp.swapaxes(body_idx, 0, 1)))
        total_E = losses_TE.sum(axis=0) * batch_size
        rest = num_examples - full * batch_size
        if rest:
            idx_EB = perm_EN[:, full * batch_size:]
            params_E, state_E, opt_E, last_E = step_E(params_E, state_E, opt_E, gather(images, idx_EB),
                                                      gather(targets, idx_EB),
                                                      _step_keys(aug_keys_E, full))
            total_E = total_E + last_E * rest
        return params_E, state_E, opt_E, total_E / num_examples

    return jax.jit(epoch, donate_argnums=(0, 1, 2))


def make_student_steps(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                       augment: Augment | None = None):
    """Build ``steps(params_E, state_E, opt_E, images_EKB, targets_EKB, aug_keys_E, t0)
    -> (params_E, state_E, opt_E, loss_sum_E)``: steps ``t0 .. t0 + K - 1`` of
    :func:`make_student_epoch`'s epoch (the same updates, scanned) with each network's ``K``
    minibatches of ``B`` given (``data.stream``: read on the host). ``loss_sum_E`` is the sum
    of each step's mean loss times ``B``."""
    step_E = _student_step(loss_fn, optimizer, augment)

    def steps(params_E, state_E, opt_E, images_EKB, targets_EKB, aug_keys_E, t0):
        count, batch = images_EKB.shape[1:3]

        def body(carry, inputs):
            t, images_EB, targets_EB = inputs
            *carry, loss = step_E(*carry, images_EB, targets_EB, _step_keys(aug_keys_E, t))
            return tuple(carry), loss

        (params_E, state_E, opt_E), losses_KE = jax.lax.scan(
            body, (params_E, state_E, opt_E),
            (t0 + jnp.arange(count), jnp.swapaxes(images_EKB, 0, 1),
             jnp.swapaxes(targets_EKB, 0, 1)))
        return params_E, state_E, opt_E, losses_KE.sum(axis=0) * batch

    return jax.jit(steps, donate_argnums=(0, 1, 2))
