"""LGM at paper scale: ImageNet-100, 1 image per class, the four ViT-B backbones of the paper, the
reference's hyperparameters throughout (docs/lgm.md#options), the full cross-model matrix.

Needs the ImageNet-100 images at 256x256 (`ddjax data info imagenet100` says where they are looked
for) and the official weights imported once per backbone (`ddjax backbone import NAME FILE`; see
`ddjax backbone info NAME`). A GPU: on one H100-class device the distillation of one backbone is
5001 updates (steps 0..5000) of 1,000 real + 1,000 synthetic 224x224 images (set lgm.chunk_size,
e.g. 250, if the step does not fit).

    ddjax distill lgm --config experiments/lgm_imagenet100.py --workdir runs/lgm_in100
    ddjax eval lgm    --config experiments/lgm_imagenet100.py --workdir runs/lgm_in100

Backbones are normalised with ImageNet mean/std, as the reference does for all four.
"""

import ml_collections

from ddjax.lgm.defaults import lgm_config

BACKBONES = ("clip=clip_vitb", "dinov2=dinov2_vitb", "eva02=eva02_vitb", "mocov3=mocov3_vitb")


def get_config() -> ml_collections.ConfigDict:
    # The reference seeds torch/numpy/random with 3407; 1000 evaluation epochs, 5 seeds, every
    # baseline and full data are lgm_eval's defaults.
    return lgm_config("imagenet100", seed=3407, lgm={"backbones": BACKBONES, "syn_res": 256})
