"""LGM on CIFAR-10 at CPU scale (2 cores): 1 image per class distilled for a frozen ddjax SSL
encoder, against the reference's baselines (lgm.md §6-7), 5 seeds each. See experiments/README.md.

The backbone is the teacher of experiments/cpu_cifar10.py (Barlow Twins ConvNet-BN, width 32,
512-d features, 32x32 inputs), trained in the same workdir:

    ddjax teacher     --config experiments/lgm_cifar10_cpu.py --workdir runs/lgm_cifar10_cpu
    ddjax distill lgm --config experiments/lgm_cifar10_cpu.py --workdir runs/lgm_cifar10_cpu
    ddjax eval lgm    --config experiments/lgm_cifar10_cpu.py --workdir runs/lgm_cifar10_cpu

Scaled down from the reference (stated in the README): 1,201 distillation steps instead of 5,001
with a pyramid level every 100 steps instead of 200 (at 32x32 the pyramid is 1..32, 6 levels, the
last one added at step 501); the full-dataset probe trains on cached center-view features (no
augmentation). Everything else is the reference's: A = 10 augmented copies (real and synthetic
batches of 100), one fresh probe per step, Adam 2e-3, standard augmentation; evaluation with
1,000 epochs, lr 1e-3 * 10 / 256, cosine, basic augmentation, final-epoch accuracy, 5 seeds.
"""

from pathlib import Path

import ml_collections

from ddjax.config import load_config
from ddjax.lgm.defaults import lgm_eval_section, lgm_section


def get_config() -> ml_collections.ConfigDict:
    base = load_config(Path(__file__).with_name("cpu_cifar10.py"))   # seed, data, teacher
    config = ml_collections.ConfigDict()
    config.seed = base.seed
    config.data = base.data          # the whole CIFAR-10 train split, the test split for evaluation
    config.teacher = base.teacher
    config.lgm = lgm_section(
        backbones=(),                # teacher=ddjax:<workdir>/teacher
        iterations=1200, pyramid_extent_it=100, augs_per_batch=10, image_log_every=200)
    config.lgm_eval = lgm_eval_section(
        full_augment=False, full_epochs=100)
    return config
