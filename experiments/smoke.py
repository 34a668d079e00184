"""Smoke configuration: the MKDT pipeline at tiny sizes that every stage accepts and finishes in
well under a minute on 2 CPU cores with the CIFAR-10 archive. Tests and quick checks use it.

    W=runs/smoke; C=experiments/smoke.py
    ddjax teacher --config $C --workdir $W && ddjax represent --config $C --workdir $W
    ddjax experts --config $C --workdir $W && ddjax select high-loss --config $C --workdir $W
    ddjax distill mkdt --config $C --workdir $W
"""

from ddjax.mkdt.defaults import mkdt_config


def get_config():
    config = mkdt_config("cifar10", 2)
    config.data.train_subset = 2000          # a fixed random 2000 of the train split
    config.teacher.update({
        "model": "convnet_bn", "model_kwargs": {"width": 16}, "epochs": 1, "batch_size": 256,
        "warmup_epochs": 0, "projector_hidden_dims": (256, 256), "projector_output_dim": 256,
        "knn_every": 1, "knn_bank": 1000, "knn_test": 1000,
    })
    config.model.update({"name": "convnet", "width": 16})
    config.experts.update({"num_experts": 2, "epochs": 2, "experts_per_program": 2})
    config.distill.update({"iterations": 4, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1,
                           "batch_syn": 16, "checkpoint_every": 2, "save_every": 2})
    return config
