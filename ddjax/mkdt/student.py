"""What students train on: the normalised (optionally ZCA-whitened) train split, the targets
(teacher representations or labels) and the student network, shared by experts, select and
distill so every stage sees exactly the same inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.data.pipeline import load_normalized
from ddjax.data.transforms import Zca, fit_zca, zca_whiten
from ddjax.errors import DdjaxError
from ddjax.models import build_model
from ddjax.workdir import Stage

REPRESENTATIONS_KEY = "representations"


def representations_path(stage: Stage) -> Path:
    """The configured representations artifact, or the ``represent`` stage's in this workdir."""
    configured = stage.config.experts.representations
    return Path(configured) if configured else stage.sibling("represent") / REPRESENTATIONS_KEY


def load_targets(stage: Stage, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Regression targets (MKDT: teacher representations) or labels, and the model's output size.

    Barlow Twins experts (the naive MTT-SSL baseline) have no targets: a zero-width
    ``[N, 0]`` placeholder keeps the epoch function's signature, and the output size is
    ``experts.ssl_output_dim`` (the 512-d head the loss acts on)."""
    loss = stage.config.experts.loss
    if loss == "ce":
        return labels, int(labels.max()) + 1
    if loss == "barlow_twins":
        return np.zeros((labels.shape[0], 0), np.float32), int(stage.config.experts.ssl_output_dim)
    if loss != "mse":
        raise DdjaxError(f"experts.loss must be 'mse' (knowledge distillation), 'ce' (labels) or "
                         f"'barlow_twins' (SSL, the naive MTT-SSL baseline), got {loss!r}")
    path = representations_path(stage)
    if not path.exists():
        raise DdjaxError(f"no teacher representations at {path}; run `ddjax represent` first "
                         "or set experts.representations to an existing artifact")
    reps = np.asarray(load_pytree(path)[REPRESENTATIONS_KEY], np.float32)
    if reps.ndim != 2 or reps.shape[0] != labels.shape[0]:
        raise DdjaxError(f"representations {path} have shape {reps.shape} but the "
                         f"train split has {labels.shape[0]} images; compute them for this dataset "
                         "with `ddjax represent`")
    return reps, reps.shape[1]


def student_inputs(stage: Stage, *, fit_missing_zca: bool = False):
    """``(images, labels, spec, zca)``: the train split normalised with the dataset's constants,
    whitened when ``experts.zca`` is on (classic MTT; MKDT uses none). The ZCA transform is fitted
    once by the experts stage and stored at ``<workdir>/experts/zca`` for every later stage."""
    images, labels, spec = load_normalized(stage.config.data, "train")
    if not stage.config.experts.get("zca", False):
        return images, labels, spec, None
    path = stage.sibling("experts") / "zca"
    if path.exists():
        zca = Zca(**{k: np.asarray(v) for k, v in load_pytree(path).items()})
    elif fit_missing_zca:
        zca = fit_zca(images, eps=stage.config.experts.zca_eps)
        save_pytree(path, dataclasses.asdict(zca))
    else:
        raise DdjaxError(f"experts.zca is on but {path} does not exist; run `ddjax experts` first")
    whitened = np.concatenate([np.asarray(zca_whiten(images[i:i + 5000], zca))
                               for i in range(0, len(images), 5000)])
    return whitened.astype(np.float32), labels, spec, zca


def student_model(config, num_outputs: int, image_size):
    """The student network of a config's ``model`` section."""
    extra = {"width": config.model.width} if "width" in config.model else {}
    return build_model(config.model.name, num_outputs=num_outputs, image_size=image_size,
                       conv_impl=config.model.conv_impl, init=config.model.init, **extra)


