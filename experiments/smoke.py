"""Smoke configuration: tiny sizes that every stage accepts and finishes in well under a minute
on 2 CPU cores with the CIFAR-10 archive. Tests and quick checks use it.

    ddjax data info cifar10
    ddjax teacher --config experiments/smoke.py --workdir runs/smoke
    ddjax represent --config experiments/smoke.py --workdir runs/smoke
    ddjax experts --config experiments/smoke.py --workdir runs/smoke
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict({
        "name": "cifar10",
        "archive": "",    # empty: $DDJAX_ARCHIVE_DIR, else ../shared/data beside the repo
        "data_dir": "",   # empty: $DDJAX_DATA_DIR, else ~/.cache/ddjax/tfds
        "train_subset": 2000,  # 0: the whole train split; n: a fixed random n of it (small runs)
    })
    # The SSL teacher (`ddjax teacher`): a recipe of ddjax.ssl.recipes by method; None keeps the
    # recipe's value. Set import_path to use a PyTorch state dict instead of training.
    config.teacher = ml_collections.ConfigDict({
        "method": "barlow_twins",       # 'barlow_twins' (KRR-ST / solo-learn) or 'simclr' (SAS)
        "model": "convnet_bn",          # 'resnet18_teacher' for the paper; any ddjax model name
        "model_kwargs": {"width": 16},
        "conv_impl": "auto",
        "init": "",                     # empty: the model's default init scheme
        "train_subset": 0,              # train on a seeded subset of the (data) train split; 0 = all
        "epochs": 1,
        "batch_size": 256,
        "optimizer": None,              # None: the recipe's (LARS for Barlow Twins)
        "lr": None,
        "weight_decay": None,
        "warmup_epochs": 0,
        "projector_hidden_dims": (256, 256),
        "projector_output_dim": 256,
        "checkpoint_every_steps": 0,    # 0: checkpoint at the end of every epoch only
        "knn_every": 1,                 # k-NN monitor every this many epochs (and at the end); 0: end only
        "knn_k": 200,
        "knn_temperature": 0.1,
        "knn_bank": 1000,               # train features in the k-NN bank (seeded subset); 0 = all
        "knn_test": 1000,               # test images scored (seeded subset); 0 = all
        "import_path": "",              # .npz / .safetensors / .pt state dict (PyTorch layout)
        "import_prefix": "",            # stripped from names, e.g. 'module.' or 'backbone.'
        "import_ignore": (),            # name prefixes to drop, e.g. ('fc.', 'projector.')
    })
    # Teacher representations of the train split (`ddjax represent`).
    config.represent = ml_collections.ConfigDict({
        "teacher": "",                  # empty: <workdir>/teacher
        "batch_size": 500,
    })
    # The student network (experts, distillation, evaluation pre-training).
    config.model = ml_collections.ConfigDict({
        "name": "convnet",
        "width": 16,
        "conv_impl": "auto",
        "init": "torch",
    })
    config.experts = ml_collections.ConfigDict({
        "loss": "mse",              # 'mse': KD to teacher representations (MKDT); 'ce': labels (MTT)
        "representations": "",      # empty: <workdir>/represent/representations
        "num_experts": 2,
        "epochs": 2,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 256,
        "experts_per_program": 2,   # experts trained together in one vmapped program
        "keep_epochs": -1,          # -1: keep every epoch; k: keep epochs 0..k only
        "zca": False,               # ZCA-whiten the inputs (classic MTT option; MKDT: off)
        "zca_eps": 0.1,             # kornia's / MTT's regularisation
    })
    config.select = ml_collections.ConfigDict({
        "percents": (2, 5),         # subset sizes, % of the train split; smaller ones nest
        "epoch": 1,                 # the experts' checkpoint that scores examples (MKDT: 1)
    })
    config.distill = ml_collections.ConfigDict({
        "mode": "mkdt",             # 'mkdt': MSE to learnable targets; 'mtt': CE to fixed labels
        "init": "high_loss",        # 'high_loss' | 'random' (select outputs) | path to .npy indices
        "percent": 2,               # which select/<init>_<percent>pct.npy
        "num_syn": 0,               # expected synthetic set size; 0: the init file's size
        "iterations": 4,
        "syn_steps": 3,             # N inner steps per unroll
        "expert_epochs": 1,         # M: match θ_{s+M}
        "max_start_epoch": 1,       # s ~ U{0..max_start_epoch-1}
        "batch_syn": 16,
        "lr_images": 1000.0,
        "lr_targets": 1.0,
        "lr_lr": 1e-4,
        "lr_init": 0.1,             # initial inner lr (the experts' lr)
        "experts_per_step": 1,      # >1: vmapped meta-batch of experts (option, not the reference)
        "inner_dtype": "float32",   # 'bfloat16': inner loop in bf16 (option)
        "remat": True,              # jax.checkpoint the unrolled step (memory flat in syn_steps)
        "checkpoint_every": 2,
        "save_every": 2,
    })
    return config
