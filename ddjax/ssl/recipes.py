"""Teacher-training recipes: every hyperparameter of one SSL run.

A :class:`TeacherRecipe` is plain data; ``loss_fn()``, ``projector()`` and
``optimizer(steps_per_epoch)`` build what :func:`make_ssl_train_step` takes.
``barlow_twins_cifar`` is solo-learn's CIFAR Barlow Twins recipe (KRR-ST, whose checkpoint MKDT
uses, ships no training code; its stem is solo-learn's); ``simclr_cifar`` is SAS's SimCLR, MKDT's
SimCLR teacher. Values and their sources: docs/mkdt.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

from ddjax.ssl.augment import ViewAugmentConfig
from ddjax.ssl.heads import BarlowTwinsProjector, SimCLRProjector
from ddjax.ssl.losses import barlow_twins_loss, nt_xent_loss
from ddjax.ssl.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class TeacherRecipe:
    """Hyperparameters of one SSL teacher run (method is 'barlow_twins' or 'simclr')."""

    method: str
    augment: ViewAugmentConfig
    epochs: int
    batch_size: int
    optimizer_name: str
    lr: float
    weight_decay: float
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    warmup_init_lr: float = 0.0
    end_lr: float = 0.0
    trust_coefficient: float = 0.001
    exclude_bias_and_norm: Optional[bool] = None
    encoder_joint_batch: bool = False
    # Barlow Twins
    lambd: float = 0.0051
    loss_scale: float = 1.0
    projector_hidden_dims: Tuple[int, ...] = (2048, 2048)
    projector_output_dim: int = 2048
    projector_use_bias: Optional[bool] = True
    # SimCLR
    temperature: float = 0.5

    def loss_fn(self):
        """``loss(z1, z2)`` for this recipe."""
        if self.method == "barlow_twins":
            return functools.partial(barlow_twins_loss, lambd=self.lambd, scale=self.loss_scale)
        if self.method == "simclr":
            return functools.partial(nt_xent_loss, temperature=self.temperature)
        raise ValueError(f"method must be 'barlow_twins' or 'simclr', got {self.method!r}")

    def projector(self):
        """A fresh projector module for this recipe."""
        if self.method == "barlow_twins":
            return BarlowTwinsProjector(
                hidden_dims=tuple(self.projector_hidden_dims),
                output_dim=self.projector_output_dim,
                use_bias=bool(self.projector_use_bias),
            )
        hidden = self.projector_hidden_dims[0] if self.projector_hidden_dims else None
        return SimCLRProjector(
            hidden_dim=hidden,
            output_dim=self.projector_output_dim,
            use_bias=self.projector_use_bias,
        )

    def optimizer(self, steps_per_epoch: int):
        """The optax optimiser over ``epochs * steps_per_epoch`` steps."""
        return make_optimizer(
            self.optimizer_name,
            self.lr,
            self.weight_decay,
            self.momentum,
            total_steps=self.epochs * steps_per_epoch,
            warmup_steps=self.warmup_epochs * steps_per_epoch,
            schedule=self.schedule,
            warmup_init_lr=self.warmup_init_lr,
            end_lr=self.end_lr,
            trust_coefficient=self.trust_coefficient,
            exclude_bias_and_norm=self.exclude_bias_and_norm,
        )


def barlow_twins_cifar() -> TeacherRecipe:
    """solo-learn's CIFAR Barlow Twins (taken as KRR-ST's teacher recipe; see module doc)."""
    return TeacherRecipe(
        method="barlow_twins",
        augment=ViewAugmentConfig.barlow_twins_cifar(),
        epochs=1000,
        batch_size=256,
        optimizer_name="lars",
        lr=0.3,
        weight_decay=1e-4,
        momentum=0.9,
        schedule="cosine",
        warmup_epochs=10,
        warmup_init_lr=3e-5,
        end_lr=0.0,
        trust_coefficient=0.02,
        exclude_bias_and_norm=True,
        encoder_joint_batch=False,
        lambd=0.0051,
        loss_scale=0.1,
        projector_hidden_dims=(2048, 2048),
        projector_output_dim=2048,
        projector_use_bias=True,
    )


def simclr_cifar() -> TeacherRecipe:
    """SAS's SimCLR on CIFAR (MKDT's SimCLR teacher)."""
    return TeacherRecipe(
        method="simclr",
        augment=ViewAugmentConfig.simclr_cifar(),
        epochs=400,
        batch_size=512,
        optimizer_name="adam",
        lr=1e-3,
        weight_decay=1e-6,
        momentum=0.9,
        schedule="constant",
        exclude_bias_and_norm=False,
        encoder_joint_batch=True,
        temperature=0.5,
        projector_hidden_dims=(512,),
        projector_output_dim=128,
        projector_use_bias=False,
    )
