"""Frozen feature extractors ("backbones") by name: what LGM distils for and probes on.

A backbone maps images in [0, 1] (NHWC, at its ``resolution``) to features ``[N, D]``; it owns its
normalisation and its variables. ddjax encoders (a teacher artifact) and imported ViTs are
backbones alike, so LGM and the probes never need to know which one they hold.
"""

from ddjax.backbones.registry import Backbone, backbone_names, load_backbone, register_family
from ddjax.backbones.vit_store import import_weights, vit_backbone  # registers the ViT names

__all__ = [
    "Backbone", "backbone_names", "import_weights", "load_backbone", "register_family",
    "vit_backbone",
]
