"""The imported-backbone artifact: official ViT weights converted once by ``ddjax backbone import``
(arrays: the Flax params; meta: name, family, configuration, source file and its SHA-256, dropped
keys), in ``$DDJAX_BACKBONE_DIR/<name>`` (see ``ddjax.backbones.vit_store``), not in a workdir.
"""

from ddjax.artifacts.base import Artifact

BACKBONE = Artifact("imported backbone", "{name}", "ddjax backbone import NAME FILE",
                    identity=("name", "config"), hint="with the official weights file",
                    remedy="import the weights again for this name")
