"""MKDT at the paper's settings (docs/mkdt.md), one argument per table row:
``cifar10_2`` (default), ``cifar10_5``, ``cifar100_2``, ``cifar100_5``, ``tiny_imagenet_2``.

    W=runs/mkdt_cifar10_2; C=experiments/mkdt_paper.py:cifar10_2
    ddjax teacher --config $C --workdir $W --set teacher.import_path=barlow_twins_resnet18_cifar10.pt
    ddjax represent --config $C --workdir $W
    ddjax experts --config $C --workdir $W
    ddjax select high-loss --config $C --workdir $W
    ddjax distill mkdt --config $C --workdir $W

MKDT used KRR-ST's Barlow Twins ResNet-18 checkpoint (``teacher_ckpt/barlow_twins_resnet18_
<dataset>.pt`` of db-Lee/selfsup_dd) as its teacher; without ``teacher.import_path``, ``ddjax
teacher`` trains one (an accelerator's job). See docs/mkdt.md#teacher.
"""

from ddjax.mkdt.defaults import mkdt_config


def get_config(setting: str = "cifar10_2"):
    dataset, _, percent = setting.rpartition("_")
    return mkdt_config(dataset, int(percent))
