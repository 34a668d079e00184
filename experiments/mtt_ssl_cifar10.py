"""The naive MTT-SSL baseline (MKDT's Appendix F) at the CPU scale of ``cpu_cifar10.py``: experts
trained with Barlow Twins on two DSA views of each minibatch instead of KD, distillation in
``mtt_ssl`` mode (the same Barlow Twins on two DSA views of each synthetic minibatch; images and
lr learned, no targets), started from the random 2% subset (high-loss selection scores KD experts
only). The paper reports that this fails: the matching loss barely falls and the images barely
move. No teacher or representations are needed.

    W=runs/mtt_ssl_cifar10; C=experiments/mtt_ssl_cifar10.py
    ddjax experts --config $C --workdir $W && ddjax select random --config $C --workdir $W
    ddjax distill mkdt --config $C --workdir $W
    ddjax eval mkdt --config $C --workdir $W      # pre-trains with the experts' Barlow Twins
"""

import importlib.util
from pathlib import Path

_CPU = Path(__file__).with_name("cpu_cifar10.py")


def get_config():
    spec = importlib.util.spec_from_file_location("cpu_cifar10", _CPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.experts.loss = "barlow_twins"
    config.distill.update({"mode": "mtt_ssl", "init": "random"})
    config.mkdt_eval.rows = ("no_pretrain", "mkdt")  # the KD rows need a teacher: see cpu_cifar10.py
    return config
