"""Optimisers for SSL teacher training: LARS, SGD, Adam (L2) and AdamW, with lr schedules.

``make_optimizer`` returns one ``optax.GradientTransformation`` over encoder and projector.
'lars' (``optax.lars``) excludes biases and norms (parameters of rank < 2) from weight decay and
trust-ratio adaptation, as Barlow Twins and solo-learn (whose LARS ``clip_lr`` is not reproduced);
'sgd' and 'adam' add L2 to the gradient as PyTorch does; 'adamw' decays decoupled. Schedules:
'cosine' (linear warmup, then cosine to ``end_lr``, per step, solo-learn) or 'constant' (SAS).
"""

from __future__ import annotations

from typing import Optional

import jax
import optax

OPTIMIZERS = ("lars", "sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


def matrix_mask(params):
    """True for parameters with two or more dimensions (kernels), False for biases and norms."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_schedule(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    warmup_init_lr: float = 0.0,
    end_lr: float = 0.0,
):
    """The learning rate as a function of the optimiser step."""
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=warmup_init_lr,
        peak_value=lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_lr,
    )


def make_optimizer(
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    total_steps: int = 1,
    warmup_steps: int = 0,
    *,
    schedule: str = "cosine",
    warmup_init_lr: float = 0.0,
    end_lr: float = 0.0,
    trust_coefficient: float = 0.001,
    exclude_bias_and_norm: Optional[bool] = None,
) -> optax.GradientTransformation:
    """An optax optimiser by name ('lars', 'sgd', 'adam', 'adamw') with a warmup-cosine schedule.

    ``exclude_bias_and_norm`` (default: True for 'lars', False otherwise) keeps parameters with
    fewer than two dimensions out of weight decay (and, for LARS, out of the trust ratio).
    ``momentum`` is the SGD/LARS momentum or Adam's ``b1``.
    """
    learning_rate = make_schedule(lr, total_steps, warmup_steps, schedule, warmup_init_lr, end_lr)
    if exclude_bias_and_norm is None:
        exclude_bias_and_norm = name == "lars"
    decay_mask = matrix_mask if exclude_bias_and_norm else None
    if name == "lars":
        return optax.lars(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=decay_mask if decay_mask is not None else True,
            trust_coefficient=trust_coefficient,
            trust_ratio_mask=decay_mask if decay_mask is not None else True,
            momentum=momentum,
        )
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.sgd(learning_rate, momentum=momentum or None),
        )
    if name == "adam":
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.adam(learning_rate, b1=momentum),
        )
    if name == "adamw":
        return optax.adamw(learning_rate, b1=momentum, weight_decay=weight_decay, mask=decay_mask)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
