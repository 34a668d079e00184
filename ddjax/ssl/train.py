"""The pure training step of an SSL teacher (encoder + projector).

State is a pytree (:class:`SSLTrainState`). ``step(state, images, key)`` draws two views on
device, normalises them, runs both networks with BatchNorm in training mode and applies one
optimiser update; the caller jits it and derives ``key`` as ``fold_in(base_key, step)``, so a
resumed run repeats the same augmentations. ``encoder_joint_batch`` runs the two views through the
encoder as one batch (SAS's SimCLR) instead of one view at a time (Barlow Twins, solo-learn).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from ddjax.ssl.augment import ViewAugmentConfig, make_views


@flax.struct.dataclass
class SSLTrainState:
    """``params`` and ``batch_stats`` are dicts ``{'encoder': ..., 'projector': ...}``."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def to_unit_float(images):
    """uint8 images to float32 in [0, 1]; float images are passed through as float32."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def _normalizer(mean: Sequence[float], std: Sequence[float]):
    mean_C = jnp.asarray(mean, jnp.float32)
    std_C = jnp.asarray(std, jnp.float32)
    return lambda x_NHWC: (x_NHWC - mean_C) / std_C


def _variables(params, batch_stats):
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def _apply_train(module, params, batch_stats, x):
    """Forward in training mode; returns the output and the updated batch statistics."""
    variables = _variables(params, batch_stats)
    out, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, updates.get("batch_stats", batch_stats)


def init_ssl_state(
    key, encoder, projector, optimizer: optax.GradientTransformation, sample_images_NHWC
) -> SSLTrainState:
    """Initialise both networks and the optimiser state; only the sample's shape is used."""

    def init(key, x):
        k_enc, k_proj = jax.random.split(key)
        enc_vars = encoder.init(k_enc, x, train=False)
        features = encoder.apply(enc_vars, x, train=False)
        proj_vars = projector.init(k_proj, features, train=False)
        params = {"encoder": enc_vars["params"], "projector": proj_vars["params"]}
        batch_stats = {
            "encoder": enc_vars.get("batch_stats", {}),
            "projector": proj_vars.get("batch_stats", {}),
        }
        return SSLTrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=optimizer.init(params),
        )

    # Compiled once rather than run op by op: much faster for ResNet-sized models.
    return jax.jit(init)(key, to_unit_float(jnp.asarray(sample_images_NHWC[:1])))


def make_ssl_train_step(
    encoder,
    projector,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    augment_config: ViewAugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    encoder_joint_batch: bool = False,
):
    """Build ``step(state, images_NHWC, key) -> (state, metrics)``; pure and jittable.

    ``images_NHWC`` are uint8 in [0, 255] or float in [0, 1] (un-normalised); ``loss_fn(z1, z2)``
    maps the two views' projections to a scalar (e.g. ``functools.partial(barlow_twins_loss,
    lambd=0.0051)``). Metrics: ``loss``, ``grad_norm``, and ``feature_std`` (mean over dimensions
    of the batch standard deviation of the L2-normalised encoder features of view 1; it falls
    towards 0 when representations collapse).
    """
    normalize = _normalizer(mean, std)

    def loss_and_stats(params, batch_stats, v1, v2):
        enc_p, enc_bs = params["encoder"], batch_stats["encoder"]
        if encoder_joint_batch:
            h, enc_bs = _apply_train(encoder, enc_p, enc_bs, jnp.concatenate([v1, v2], axis=0))
            h1, h2 = jnp.split(h, 2, axis=0)
        else:
            h1, enc_bs = _apply_train(encoder, enc_p, enc_bs, v1)
            h2, enc_bs = _apply_train(encoder, enc_p, enc_bs, v2)
        proj_p, proj_bs = params["projector"], batch_stats["projector"]
        z1, proj_bs = _apply_train(projector, proj_p, proj_bs, h1)
        z2, proj_bs = _apply_train(projector, proj_p, proj_bs, h2)
        loss = loss_fn(z1, z2)
        unit = h1 / jnp.maximum(jnp.linalg.norm(h1, axis=-1, keepdims=True), 1e-12)
        feature_std = jnp.mean(jnp.std(unit, axis=0))
        return loss, ({"encoder": enc_bs, "projector": proj_bs}, feature_std)

    def step(state: SSLTrainState, images_NHWC, key):
        x = to_unit_float(images_NHWC)
        v1, v2 = make_views(key, x, augment_config)
        grad_fn = jax.value_and_grad(loss_and_stats, has_aux=True)
        (loss, (batch_stats, feature_std)), grads = grad_fn(
            state.params, state.batch_stats, normalize(v1), normalize(v2)
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "feature_std": feature_std}
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return step

