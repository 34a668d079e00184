"""Smoke configuration: each method's pipeline at tiny sizes (a fixed 2,000 of CIFAR-10's train
images, a one-epoch width-16 teacher) that every stage accepts and finishes in well under a
minute on 2 CPU cores. Tests and quick checks use it.

    W=runs/smoke; C=experiments/smoke.py          # MKDT (the argument defaults to mkdt)
    ddjax teacher --config $C --workdir $W && ddjax represent --config $C --workdir $W
    ddjax experts --config $C --workdir $W && ddjax select high-loss --config $C --workdir $W
    ddjax distill mkdt --config $C --workdir $W
    C=experiments/smoke.py:lgm                    # LGM, the workdir's teacher as the backbone
    ddjax teacher --config $C --workdir $W && ddjax distill lgm --config $C --workdir $W
    ddjax eval lgm --config $C --workdir $W
"""

from ddjax.errors import DdjaxError
from ddjax.lgm.defaults import lgm_config
from ddjax.mkdt.defaults import mkdt_config

TEACHER = {"model": "convnet_bn", "model_kwargs": {"width": 16}, "epochs": 1, "batch_size": 256,
           "warmup_epochs": 0, "projector_hidden_dims": (256, 256), "projector_output_dim": 256,
           "knn_every": 1, "knn_bank": 1000, "knn_test": 1000}


def get_config(method: str = "mkdt"):
    if method == "mkdt":
        config = mkdt_config("cifar10", 2)
        config.model.update({"name": "convnet", "width": 16})
        config.experts.update({"num_experts": 2, "epochs": 2, "experts_per_program": 2})
        config.distill.update({"iterations": 4, "syn_steps": 3, "expert_epochs": 1,
                               "max_start_epoch": 1, "batch_syn": 16, "checkpoint_every": 2,
                               "save_every": 2})
    elif method == "lgm":
        config = lgm_config(
            "cifar10",
            lgm={"iterations": 20, "augs_per_batch": 2, "pyramid_extent_it": 4,
                 "checkpoint_every": 10, "log_every": 5, "image_log_every": 10},
            lgm_eval={"seeds": 2, "epochs": 20, "random_seeds": (0, 1), "full_epochs": 1,
                      "full_augment": False, "full_seeds": 2, "test_subset": 500,
                      "alignment_images": 200})
    else:
        raise DdjaxError(f"experiments/smoke.py takes mkdt or lgm, got {method!r}")
    config.data.train_subset = 2000          # a fixed random 2000 of the train split
    config.teacher.update(TEACHER)
    return config
