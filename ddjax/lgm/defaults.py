"""LGM's configuration with the reference's defaults (docs/lgm.md): ``lgm_config(dataset)`` is the
shared ``seed``/``data``/``teacher`` sections plus ``lgm`` and ``lgm_eval``. Experiment files
change fields with ``lgm_section(**changes)`` / ``lgm_eval_section(**changes)``, so every field is
documented once, here.
"""

from __future__ import annotations

import ml_collections

from ddjax.defaults import base_config
from ddjax.errors import DdjaxError

LGM_DEFAULTS = {
    # "tag=spec" or "spec" per backbone; empty: teacher=ddjax:<workdir>/teacher
    "backbones": (),
    "ipc": 1,                   # synthetic images per class
    "iterations": 5000,         # steps 0..iterations (the reference's 5001 updates)
    "lr": 2e-3,                 # Adam, every pyramid level; state reset when a level is added
    "augs_per_batch": 10,       # A: augmented copies of the synthetic set per step
    "num_probes": 1,            # K random probes per step sharing one backbone pass (1: reference)
    "probe_grad": "closed_form",  # or 'autodiff' (jax.grad of the probe loss; same values)
    "chunk_size": 0,            # > 0: exact two-pass meta-gradient over chunks of this many rows
    "distill_mode": "pyramid",  # or 'pixels'
    "aug_mode": "standard",     # flip + unclamped random resized crop + N(0.5, 0.2^2) noise on half
    "decorrelate_color": True,
    "init_mode": "noise",       # or 'zero'
    "pyramid_extent_it": 200,   # a level is added at steps 201, 401, ...
    "pyramid_start_res": 1,
    "syn_res": 0,               # 0: the train images' resolution (the reference: 256)
    "checkpoint_every": 100,
    "log_every": 10,
    "image_log_every": 500,     # PNG of the set every this many steps and at the last; 0: none
}

LGM_EVAL_DEFAULTS = {
    "backbones": (),            # probe backbones B ("tag=spec"); empty: lgm.backbones
    "seeds": 5,                 # probes per set, seeded seed_base + i
    "seed_base": 3407,
    "epochs": 1000,
    "batch_size": 100,          # min(batch_size, N) per step
    "lr_per_256": 1e-3,         # lr = lr_per_256 * batch / 256
    "aug_mode": "basic",        # flip + random resized crop, no noise
    "baselines": ("random", "centroids", "neighbors", "full"),
    "random_seeds": (0, 1, 2, 3, 4),
    "full_epochs": 100,
    "full_batch_size": 128,
    "full_lr_per_256": 1e-3,
    "full_augment": True,       # False: probe on cached center-view features (much faster)
    "full_seeds": 5,
    "full_train_subset": 0,     # 0: the whole train split
    "test_subset": 0,           # 0: the whole test split
    "embed_batch": 500,
    "alignment_k": 10,
    "alignment_images": 1000,
}


def lgm_section(**changes) -> ml_collections.ConfigDict:
    return _section(LGM_DEFAULTS, changes)


def lgm_eval_section(**changes) -> ml_collections.ConfigDict:
    return _section(LGM_EVAL_DEFAULTS, changes)


def _section(defaults: dict, changes: dict) -> ml_collections.ConfigDict:
    unknown = sorted(set(changes) - set(defaults))
    if unknown:
        raise DdjaxError(f"unknown field(s) {unknown}; known: {sorted(defaults)}")
    return ml_collections.ConfigDict(dict(defaults, **changes))


def lgm_config(dataset: str, *, seed: int = 0, lgm: dict | None = None,
               lgm_eval: dict | None = None) -> ml_collections.ConfigDict:
    """The LGM pipeline for ``dataset``: shared sections, then ``lgm`` and ``lgm_eval`` with the
    given changes."""
    config = base_config(dataset, seed)
    config.lgm = lgm_section(**(lgm or {}))
    config.lgm_eval = lgm_eval_section(**(lgm_eval or {}))
    return config
