"""CIFAR-10 at the scale of a 2-core CPU: real, small runs on the whole train split, one argument
per run (figures and exact commands in experiments/README.md).

``mkdt`` (default): MKDT. The teacher is a ConvNet-BN of width 32 (512-d features, the teachers'
size) trained with the Barlow Twins recipe for 6 epochs (~23 min; k-NN 42.3% at init -> 51.1%);
4 width-32 ConvNet experts of 3 epochs; 100 distillation iterations of 10 inner steps on the 2%
high-loss set (with 20 steps the exact meta-gradient of this small setting explodes).
``mtt_ssl``: the naive MTT-SSL baseline (MKDT's Appendix F) at that scale: Barlow Twins experts
on two DSA views, ``mtt_ssl`` distillation from the random 2% subset; no teacher needed.
``lgm``: LGM, 1 image per class for the same teacher as a frozen backbone; 1,201 steps with a
pyramid level every 100 (the reference: 5,001 and 200), full-data probe on cached features.
``repro``: the issue-15 reproduction (docs/results.md): the same student and sizes with a stronger
teacher, 40 epochs of the same recipe (~2.5 h of 2 cores), k-NN every 5 epochs.
``lgm_cross``: three encoders (bt32: this teacher; bt16: the smoke teacher; init32: an untrained
ConvNet-BN w32), each distilled and probed with every encoder, and their alignment.

    W=runs/cpu; C=experiments/cpu_cifar10.py     # then the stages of experiments/smoke.py
"""

from ddjax.errors import DdjaxError
from ddjax.lgm.defaults import lgm_config
from ddjax.mkdt.defaults import mkdt_config

TEACHER = {"model": "convnet_bn", "model_kwargs": {"width": 32},  # 32 x 4 x 4 = 512 features
           "epochs": 6, "batch_size": 256, "warmup_epochs": 1,
           "projector_hidden_dims": (512, 512), "projector_output_dim": 512,
           "checkpoint_every_steps": 50, "knn_every": 1}
CROSS_BACKBONES = ("bt32=ddjax:workdirs/lgm_cifar10_cpu/teacher",
                   "bt16=ddjax:workdirs/lgm_smoke/teacher",
                   "init32=ddjax:workdirs/lgm_init32/teacher")


REPRO_TEACHER = {**TEACHER, "epochs": 40, "warmup_epochs": 2, "knn_every": 5}


def get_config(run: str = "mkdt"):
    if run == "repro":
        config = get_config("mkdt")
        config.teacher.update(REPRO_TEACHER)
        config.mkdt_eval.rows = (*config.mkdt_eval.rows, "full")  # the issue-15 table has full data
        return config
    if run in ("mkdt", "mtt_ssl"):
        config = mkdt_config("cifar10", 2)
        config.model.update({"name": "convnet", "width": 32})
        config.experts.update({"num_experts": 4, "epochs": 3, "experts_per_program": 2})
        config.distill.update({"iterations": 100, "syn_steps": 10, "checkpoint_every": 10,
                               "save_every": 50})
        if run == "mtt_ssl":
            config.experts.loss = "barlow_twins"
            config.distill.update({"mode": "mtt_ssl", "init": "random"})
            config.mkdt_eval.rows = ("no_pretrain", "mkdt")  # the KD rows need a teacher
    elif run in ("lgm", "lgm_cross"):
        config = lgm_config("cifar10",
                            lgm={"iterations": 1200, "pyramid_extent_it": 100, "augs_per_batch": 10,
                                 "image_log_every": 200},
                            lgm_eval={"full_augment": False, "full_epochs": 100})
        if run == "lgm_cross":
            config.lgm.backbones = CROSS_BACKBONES
            config.lgm_eval.baselines = ("random", "centroids", "full")
    else:
        raise DdjaxError(f"experiments/cpu_cifar10.py takes mkdt, mtt_ssl, repro, lgm or lgm_cross, got {run!r}")
    config.teacher.update(TEACHER)
    return config
