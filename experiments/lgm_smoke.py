"""LGM smoke configuration: every LGM stage finishes in well under a minute on 2 CPU cores with
the CIFAR-10 archive (a 2,000-image train subset, the smoke teacher as the frozen backbone).

    ddjax teacher --config experiments/lgm_smoke.py --workdir runs/lgm_smoke
    ddjax distill lgm --config experiments/lgm_smoke.py --workdir runs/lgm_smoke
    ddjax eval lgm --config experiments/lgm_smoke.py --workdir runs/lgm_smoke
"""

from pathlib import Path

import ml_collections

from ddjax.config import load_config
from ddjax.lgm.defaults import lgm_eval_section, lgm_section


def get_config() -> ml_collections.ConfigDict:
    base = load_config(Path(__file__).with_name("smoke.py"))   # seed, data, teacher of smoke.py
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = base.data
    config.teacher = base.teacher
    config.lgm = lgm_section(
        backbones=(),            # the workdir's teacher
        iterations=20, augs_per_batch=2, pyramid_extent_it=4,
        checkpoint_every=10, log_every=5, image_log_every=10)
    config.lgm_eval = lgm_eval_section(
        seeds=2, epochs=20, random_seeds=(0, 1), full_epochs=1, full_augment=False, full_seeds=2,
        test_subset=500, alignment_images=200)
    return config
