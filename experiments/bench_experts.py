"""Benchmark: KD-expert training throughput, E experts vmapped in one program vs one at a time.

Times the compiled epoch function of ``ddjax.mkdt.experts`` (MKDT's expert step: ConvNet, MSE to
512-d targets, SGD momentum 0.9, wd 1e-4, batch 256) on random data with CIFAR shapes, and
reports expert-epochs per hour for a full CIFAR-10 epoch (196 steps), extrapolated from
``--steps`` timed steps. Prints one JSON line per configuration.

    python experiments/bench_experts.py --width 128 --experts 1 2 4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.mkdt.experts import (epoch_permutations, expert_keys, make_student_epoch, mse_loss_fn,
                                torch_sgd)
from ddjax.models import build_model
from ddjax.models.registry import dummy_input

CIFAR_STEPS_PER_EPOCH = 196  # ceil(50000 / 256)


def time_epoch(model, num_experts: int, steps: int, batch: int, repeats: int) -> float:
    """Seconds per timed epoch of ``steps`` full batches for ``num_experts`` vmapped experts."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(steps * batch, 32, 32, 3)).astype(np.float32))
    targets = jnp.asarray(rng.normal(size=(steps * batch, 512)).astype(np.float32))
    optimizer = torch_sgd(0.1, 0.9, 1e-4)
    epoch_fn = make_student_epoch(mse_loss_fn(model.apply), optimizer, batch)
    init_keys, data_keys, aug_keys = expert_keys(0, list(range(num_experts)))
    params = jax.vmap(lambda k: model.init(k, dummy_input((32, 32)))["params"])(init_keys)
    opt = jax.vmap(optimizer.init)(params)
    perms = epoch_permutations(data_keys, 0, steps * batch)
    params, _, opt, loss = epoch_fn(params, {}, opt, images, targets, perms, aug_keys)  # compile
    loss.block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        params, _, opt, loss = epoch_fn(params, {}, opt, images, targets, perms, aug_keys)
        loss.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per epoch call")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--conv-impl", default="auto")
    args = parser.parse_args()
    model = build_model("convnet", num_outputs=512, width=args.width, conv_impl=args.conv_impl)
    baseline = None
    for num_experts in args.experts:
        seconds = time_epoch(model, num_experts, args.steps, args.batch, args.repeats)
        per_expert_step = seconds / (args.steps * num_experts)
        rate = 3600.0 / (per_expert_step * CIFAR_STEPS_PER_EPOCH)
        if baseline is None:
            baseline = rate
        print(json.dumps({
            "backend": jax.default_backend(), "width": args.width, "experts_vmapped": num_experts,
            "batch": args.batch, "seconds_per_step_all_experts": round(seconds / args.steps, 4),
            "expert_epochs_per_hour": round(rate, 2),
            "speedup_vs_first": round(rate / baseline, 3),
        }), flush=True)


if __name__ == "__main__":
    main()
