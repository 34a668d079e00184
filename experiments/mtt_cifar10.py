"""Classic supervised MTT (Cazenavette et al. 2022) on CIFAR-10 through the same stages: experts
trained with cross-entropy at MTT's settings (lr 0.01, no momentum, no weight decay, 50 epochs,
DSA on; docs/mkdt.md#modes-mtt-and-mtt-ssl) and distillation in ``mtt`` mode (fixed one-hot labels,
learnable images and lr, DSA in the inner loop, MTT's syn_steps 20, expert_epochs 3,
max_start_epoch 25, lr_img 1000, lr_lr 1e-5, lr_teacher 0.01). ``--set experts.zca=True`` adds
MTT's ZCA option. The argument is the number of images per class (default 10).

    W=runs/mtt_cifar10; C=experiments/mtt_cifar10.py:10
    ddjax experts --config $C --workdir $W
    ddjax distill mkdt --config $C --workdir $W --set distill.init=$W/init_10ipc.npy
    # make the init indices first, e.g. a class-balanced subset with ddjax.data.class_balanced_subset
"""

from ddjax.mkdt.defaults import mkdt_config


def get_config(images_per_class: str = "10"):
    config = mkdt_config("cifar10", 2)
    config.experts.update({"loss": "ce", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "epochs": 50,
                           "dsa": True, "num_experts": 10})
    config.model.name = "convnet"
    config.distill.update({"mode": "mtt", "init": "", "num_syn": 10 * int(images_per_class),
                           "iterations": 5000, "syn_steps": 20, "expert_epochs": 3, "max_start_epoch": 25,
                           "lr_images": 1000.0, "lr_lr": 1e-5, "lr_init": 0.01,
                           "batch_syn": 10 * int(images_per_class), "dsa": True})
    return config
