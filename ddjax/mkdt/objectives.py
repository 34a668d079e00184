"""The objectives of trajectory matching, one registration per distillation mode.

A mode fixes how its experts train (``experts.loss``), the loss a student minimises in the
distillation inner loop, how each minibatch is augmented, what the synthetic set's targets are
and what identifies the experts' objective in the trajectory store. Stages look modes up here
instead of switching on strings, so a new mode is one ``register`` call.
See docs/mkdt.md#modes-mtt-and-mtt-ssl.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ddjax.errors import DdjaxError
from ddjax.mkdt.experts import (barlow_twins_loss_fn, cross_entropy_loss_fn, mse_loss_fn,
                                two_views)
from ddjax.mkdt.mtt import masked_barlow_twins, masked_cross_entropy, masked_mse

TARGETS = ("representations", "labels", "none")


def dsa_augment_fn(section):
    """DSA as a config section asks (``dsa``, ``dsa_strategy``), or None when it is off."""
    if not section.dsa:
        return None
    from ddjax.mkdt.dsa import DsaParams, dsa_augment

    return lambda key, images: dsa_augment(key, images, DsaParams(), section.dsa_strategy)


def ssl_views_fn(settings: dict):
    """The two DSA views that SSL ``settings`` describe: ``(key, x_BHWC) -> views_2BHWC``."""
    from ddjax.mkdt.dsa import DsaParams, dsa_augment

    params = DsaParams(aug_mode=settings["dsa_mode"])
    return two_views(lambda key, images: dsa_augment(key, images, params, settings["dsa_strategy"]))


@dataclasses.dataclass(frozen=True)
class Objective:
    """One distillation mode and the expert objective it matches.

    ``expert_fn(apply_fn, ssl)`` builds the experts' loss for ``make_student_epoch`` and
    ``inner_fn(apply_fn, ssl)`` the inner loss of the unroll; ``targets`` says what the experts
    regress ('representations' of the teacher, class 'labels', or 'none'); with ``ssl_views``
    the augmentation is the two views of the SSL settings the experts record (else the config
    section's DSA), and those settings are the objective's identity in the trajectory store.
    """

    mode: str
    expert_loss: str
    about: str
    targets: str
    expert_fn: Callable
    inner_fn: Callable
    ssl_views: bool = False

    @property
    def learns_targets(self) -> bool:
        """Whether distillation learns the targets (MKDT's representations; labels stay fixed)."""
        return self.targets == "representations"

    def identity(self, experts) -> dict | None:
        """What defines the experts' objective beyond ``experts.loss``, from the experts section:
        the Barlow Twins settings of SSL objectives, None otherwise."""
        if not self.ssl_views:
            return None
        return {"method": self.expert_loss, "lambda": float(experts.ssl_lambda), "views": "dsa",
                "dsa_strategy": experts.dsa_strategy, "dsa_mode": experts.ssl_dsa_mode}

    def augment(self, section, ssl: dict | None):
        """The minibatch augmentation: the SSL views of ``ssl``, or ``section``'s DSA."""
        return ssl_views_fn(ssl) if self.ssl_views else dsa_augment_fn(section)

    def expert_objective(self, apply_fn, section, ssl: dict | None = None):
        """``(loss_fn, augment)`` for ``make_student_epoch``: experts train with it and
        evaluation pre-trains SSL sets with it (``section`` is unused for SSL objectives)."""
        return self.expert_fn(apply_fn, ssl), self.augment(section, ssl)

    def inner_objective(self, apply_fn, section, ssl: dict | None):
        """``(inner_loss, augment)`` of the distillation unroll."""
        return self.inner_fn(apply_fn, ssl), self.augment(section, ssl)

    def expert_targets(self, num_examples: int, labels: Callable[[], np.ndarray],
                       representations: Callable[[], np.ndarray],
                       experts) -> tuple[np.ndarray, int]:
        """What the experts regress and their output size. Objectives without targets get a
        zero-width ``[N, 0]`` placeholder (the epoch function's signature) and
        ``experts.ssl_output_dim`` outputs; ``labels`` and ``representations`` are called only
        when needed (reading every label of a streamed split is a pass over it)."""
        if self.targets == "representations":
            reps = representations()
            return reps, reps.shape[1]
        if self.targets == "labels":
            values = labels()
            return values, int(values.max()) + 1
        return np.zeros((num_examples, 0), np.float32), int(experts.ssl_output_dim)

    def synthetic_targets(self, labels: np.ndarray, representations: Callable[[], np.ndarray],
                          num_outputs: int) -> np.ndarray | None:
        """Every train image's initial synthetic target: its representation, its one-hot label
        (cross-entropy to it is the hard-label loss), or None when there are no targets."""
        if self.targets == "representations":
            return representations()
        if self.targets == "labels":
            return np.eye(num_outputs, dtype=np.float32)[labels]
        return None


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {objective.targets!r}")
    if objective.mode in OBJECTIVES or any(o.expert_loss == objective.expert_loss
                                           for o in OBJECTIVES.values()):
        raise ValueError(f"mode {objective.mode!r} or expert loss {objective.expert_loss!r} is "
                         "registered already")
    OBJECTIVES[objective.mode] = objective
    return objective


def by_mode(mode: str) -> Objective:
    """The objective of ``distill.mode``; one line listing the modes otherwise."""
    if mode not in OBJECTIVES:
        raise DdjaxError(f"distill.mode must be one of {sorted(OBJECTIVES)}, got {mode!r}")
    return OBJECTIVES[mode]


def by_expert_loss(loss: str) -> Objective:
    """The objective whose experts train with ``experts.loss``; one line listing them otherwise."""
    for objective in OBJECTIVES.values():
        if objective.expert_loss == loss:
            return objective
    known = ", ".join(f"{o.expert_loss!r} ({o.about})" for o in OBJECTIVES.values())
    raise DdjaxError(f"experts.loss must be one of {known}, got {loss!r}")


def check_experts(experts) -> Objective:
    """Reject an unknown ``experts.loss`` or SSL settings that make no sense."""
    objective = by_expert_loss(experts.loss)
    if objective.ssl_views:
        from ddjax.mkdt.dsa import AUG_MODES, parse_strategy

        if experts.dsa:
            raise DdjaxError(f"experts.loss={experts.loss!r} always makes two DSA views of each "
                             "minibatch (experts.dsa_strategy, experts.ssl_dsa_mode); leave "
                             "experts.dsa False")
        if experts.ssl_dsa_mode not in AUG_MODES or not parse_strategy(experts.dsa_strategy):
            raise DdjaxError(f"{experts.loss} experts need experts.ssl_dsa_mode in {AUG_MODES} and a "
                             f"DSA strategy, got {experts.ssl_dsa_mode!r} and {experts.dsa_strategy!r}")
        if experts.ssl_output_dim < 1 or experts.ssl_lambda < 0:
            raise DdjaxError("experts.ssl_output_dim must be >= 1 and experts.ssl_lambda >= 0")
    return objective


register(Objective(
    "mkdt", "mse", "knowledge distillation to the teacher's representations", "representations",
    expert_fn=lambda apply_fn, ssl: mse_loss_fn(apply_fn),
    inner_fn=lambda apply_fn, ssl: masked_mse(apply_fn)))
register(Objective(
    "mtt", "ce", "labels, classic MTT", "labels",
    expert_fn=lambda apply_fn, ssl: cross_entropy_loss_fn(apply_fn),
    inner_fn=lambda apply_fn, ssl: masked_cross_entropy(apply_fn)))
register(Objective(
    "mtt_ssl", "barlow_twins", "SSL on two DSA views, the naive MTT-SSL baseline", "none",
    expert_fn=lambda apply_fn, ssl: barlow_twins_loss_fn(apply_fn, ssl["lambda"]),
    inner_fn=lambda apply_fn, ssl: masked_barlow_twins(apply_fn, ssl["lambda"]),
    ssl_views=True))
