"""Config sections every method shares: the seed, the device mesh, the dataset and the SSL teacher.

``base_config(dataset)`` starts a pipeline config; ``ddjax.mkdt.defaults`` and
``ddjax.lgm.defaults`` add their own sections to it, with the reference's values.
"""

from __future__ import annotations

import ml_collections


def base_config(dataset: str, seed: int = 0) -> ml_collections.ConfigDict:
    """``seed``, ``data`` and ``teacher`` sections for ``dataset``."""
    config = ml_collections.ConfigDict()
    config.seed = seed
    # Device layout (ddjax.mesh): axis name -> size, -1 = the remaining devices. Not part of any
    # stage's recorded settings, so a run may resume on another device count.
    config.mesh = ml_collections.ConfigDict({"data": -1})
    config.data = ml_collections.ConfigDict({
        "name": dataset,
        "archive": "",          # empty: $DDJAX_ARCHIVE_DIR, else ../shared/data beside the repo
        "data_dir": "",         # empty: $DDJAX_DATA_DIR, else ~/.cache/ddjax/tfds
        "train_subset": 0,      # 0: the whole train split; n: a fixed random n of it (small runs)
        # True: the stages that can (docs/scaling.md#reading-the-data) read each batch from the
        # source, each process only its rows, instead of loading the split (ImageNet-scale sets).
        # Same results; a layout choice like the mesh, so a run may resume with the other value.
        "stream": False,
    })
    # The SSL teacher. MKDT used KRR-ST's Barlow Twins ResNet-18 checkpoint: set import_path to that
    # file to reproduce it; otherwise `ddjax teacher` trains one with the recipe (None = recipe value:
    # 1000 epochs of LARS, batch 256, projector 2048-2048-2048; an accelerator's job).
    config.teacher = ml_collections.ConfigDict({
        "method": "barlow_twins",       # 'barlow_twins' (KRR-ST / solo-learn) or 'simclr' (SAS)
        "model": "resnet18_teacher",    # torchvision resnet18: 3x3 stem, padding 2, no max-pool/fc
        "model_kwargs": {},
        "conv_impl": "auto",
        "init": "",                     # empty: the model's default init scheme
        "train_subset": 0,              # train on a seeded subset of the train split; 0 = all
        "epochs": None,
        "batch_size": None,
        "optimizer": None,
        "lr": None,
        "weight_decay": None,
        "warmup_epochs": None,
        "projector_hidden_dims": None,
        "projector_output_dim": None,
        "checkpoint_every_steps": 0,    # 0: checkpoint at the end of every epoch only
        "knn_every": 10,                # k-NN monitor every this many epochs (and at the end)
        "knn_k": 200,
        "knn_temperature": 0.1,
        "knn_bank": 0,                  # train features in the k-NN bank (seeded subset); 0 = all
        "knn_test": 0,                  # test images scored (seeded subset); 0 = all
        "import_path": "",              # .npz / .safetensors / .pt state dict (PyTorch layout)
        "import_prefix": "",            # stripped from names, e.g. 'module.' or 'backbone.'
        "import_ignore": (),            # name prefixes to drop, e.g. ('fc.', 'projector.')
    })
    return config
