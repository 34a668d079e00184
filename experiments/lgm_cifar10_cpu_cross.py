"""LGM cross-model check at CPU scale: three frozen CIFAR-10 encoders, each distilled (1 image per
class, the settings of lgm_cifar10_cpu.py) and each set probed with every encoder, beside the
encoders' mutual 10-NN alignment on 1,000 test images and its rank correlation with the
cross-model accuracy. See experiments/README.md for the commands that make the three encoders:

  bt32   the Barlow Twins ConvNet-BN w32 of lgm_cifar10_cpu.py (6 epochs, whole train split);
  bt16   the smoke teacher (Barlow Twins ConvNet-BN w16, 1 epoch on 2,000 images);
  init32 a ConvNet-BN w32 that never learned (teacher lr 0: initial weights, BatchNorm running
         statistics from one pass over 5,000 images).

    ddjax distill lgm --config experiments/lgm_cifar10_cpu_cross.py --workdir workdirs/lgm_cross
    ddjax eval lgm    --config experiments/lgm_cifar10_cpu_cross.py --workdir workdirs/lgm_cross
"""

from pathlib import Path

import ml_collections

from ddjax.config import load_config

BACKBONES = ("bt32=ddjax:workdirs/lgm_cifar10_cpu/teacher",
             "bt16=ddjax:workdirs/lgm_smoke/teacher",
             "init32=ddjax:workdirs/lgm_init32/teacher")


def get_config() -> ml_collections.ConfigDict:
    config = load_config(Path(__file__).with_name("lgm_cifar10_cpu.py"))
    config.lgm.backbones = BACKBONES
    config.lgm_eval.baselines = ("random", "centroids", "full")
    return config
