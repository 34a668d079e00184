"""Smoke configuration: tiny sizes that every stage accepts and finishes in well under a minute
on 2 CPU cores with the CIFAR-10 archive. Tests and quick checks use it.

    ddjax data info cifar10
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict({
        "name": "cifar10",
        "archive": "",    # empty: $DDJAX_ARCHIVE_DIR, else ../shared/data beside the repo
        "data_dir": "",   # empty: $DDJAX_DATA_DIR, else ~/.cache/ddjax/tfds
    })
    config.model = ml_collections.ConfigDict({
        "name": "convnet",
        "width": 16,
        "conv_impl": "auto",
        "init": "torch",
    })
    return config
