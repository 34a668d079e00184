"""MKDT's CIFAR-10 pipeline scaled to a 2-core CPU: a real, small run on the whole train split.

The teacher is a ConvNet-BN of width 32 (512-d features, the teachers' size) trained with the
Barlow Twins recipe for 6 epochs (23 min on 2 shared cores; k-NN 42.3% at init -> 51.1%). The
experts are 4 width-32 ConvNets trained for 3 epochs; distillation runs 100 iterations of 10
inner steps on the 2% high-loss set (with 20 steps the exact meta-gradient of this small setting
explodes: see experiments/README.md). Run the chain of experiments/smoke.py with
``C=experiments/cpu_cifar10.py``; figures are in experiments/README.md.
"""

from ddjax.mkdt.defaults import mkdt_config


def get_config():
    config = mkdt_config("cifar10", 2)
    config.teacher.update({
        "model": "convnet_bn", "model_kwargs": {"width": 32},  # 32 x 4 x 4 = 512 features
        "epochs": 6, "batch_size": 256, "warmup_epochs": 1,
        "projector_hidden_dims": (512, 512), "projector_output_dim": 512,
        "checkpoint_every_steps": 50, "knn_every": 1,
    })
    config.model.update({"name": "convnet", "width": 32})
    config.experts.update({"num_experts": 4, "epochs": 3, "experts_per_program": 2})
    config.distill.update({"iterations": 100, "syn_steps": 10, "checkpoint_every": 10, "save_every": 50})
    return config
