"""Self-supervised learning building blocks: losses, views, projectors, teacher training.

MKDT needs an SSL-trained ResNet-18 teacher (Barlow Twins from KRR-ST, or SimCLR from SAS) whose
512-d encoder output is the distillation target. This package trains such teachers from scratch
in JAX and monitors them with a weighted k-NN classifier.
"""

from ddjax.ssl.augment import (
    AugmentConfig,
    ViewAugmentConfig,
    augment_batch,
    augment_image,
    make_views,
)
from ddjax.ssl.heads import BarlowTwinsProjector, SimCLRProjector
from ddjax.ssl.knn import knn_accuracy, knn_predict
from ddjax.ssl.losses import (
    BARLOW_TWINS_LAMBDA,
    SIMCLR_TEMPERATURE,
    barlow_twins_loss,
    cross_correlation,
    nt_xent_loss,
)
from ddjax.ssl.optim import make_optimizer, make_schedule
from ddjax.ssl.recipes import TeacherRecipe
from ddjax.ssl.train import SSLTrainState, init_ssl_state, make_ssl_train_step

__all__ = [
    "AugmentConfig",
    "ViewAugmentConfig",
    "augment_batch",
    "augment_image",
    "make_views",
    "BarlowTwinsProjector",
    "SimCLRProjector",
    "knn_accuracy",
    "knn_predict",
    "BARLOW_TWINS_LAMBDA",
    "SIMCLR_TEMPERATURE",
    "barlow_twins_loss",
    "cross_correlation",
    "nt_xent_loss",
    "make_optimizer",
    "make_schedule",
    "TeacherRecipe",
    "SSLTrainState",
    "init_ssl_state",
    "make_ssl_train_step",
]
