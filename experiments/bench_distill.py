"""Benchmark: one MKDT outer iteration (unroll + meta-gradient + update), ddjax vs plain PyTorch.

The PyTorch side is written here the way the reference code works: one flat parameter vector,
a functional ConvNet that views slices of it, ``autograd.grad(create_graph=True)`` at every inner
step, then ``backward()`` of the normalised distance to the images, targets and lr. Both sides
use the same sizes (default: CIFAR-10 2%: 1000 images, batch 256, ConvNet width 128 depth 3,
512-d targets) and the same minibatch schedule.

Each configuration runs in its own process, so its peak resident memory is its own.

    python experiments/bench_distill.py --syn-steps 10 20 40 80            # sweep, both impls
    python experiments/bench_distill.py --one jax --syn-steps 40            # one configuration
    python experiments/bench_distill.py --impls jax --syn-steps 10 --stability  # + one stability check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def schedule(num_syn: int, batch: int, steps: int, seed: int = 0):
    """The reference's minibatch order for one unroll, as (idx, mask) arrays."""
    from ddjax.mkdt.sampling import SyntheticBatches

    return SyntheticBatches(num_syn, batch).next_steps(steps, np.random.default_rng(seed))


def data(num_syn: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_syn, 32, 32, 3)).astype(np.float32),
            rng.normal(size=(num_syn, dim)).astype(np.float32))


def time_jax(args) -> tuple[list[float], dict]:
    import functools

    import jax
    import jax.numpy as jnp

    from ddjax.mkdt.mtt import make_meta_loss, make_outer_step, masked_mse, outer_optimizer
    from ddjax.mkdt.stability import unroll_stability
    from ddjax.models import build_model
    from ddjax.models.registry import dummy_input

    model = build_model("convnet", num_outputs=args.dim, width=args.width, conv_impl=args.conv_impl)
    init = lambda k: model.init(k, dummy_input((32, 32)))["params"]
    start, target = init(jax.random.key(0)), init(jax.random.key(1))
    images, targets = data(args.num_syn, args.dim)
    syn = {"images": jnp.asarray(images), "targets": jnp.asarray(targets), "lr": jnp.asarray(0.1, jnp.float32)}
    optimizer = outer_optimizer(1000.0, 1.0, 1e-4)
    dtype = None if args.inner_dtype == "float32" else jnp.dtype(args.inner_dtype)
    step = make_outer_step(make_meta_loss(masked_mse(model.apply), remat=not args.no_remat,
                                          inner_dtype=dtype), optimizer)
    idx, mask = schedule(args.num_syn, args.batch, args.syn_steps)
    experts = args.experts_per_step  # the same expert repeated: the cost of an E-expert meta-batch
    stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * experts), t)
    arguments = (stack(start), stack(target), stack(jnp.asarray(idx)), stack(jnp.asarray(mask)),
                 jax.random.split(jax.random.key(0), experts))
    opt_state = optimizer.init(syn)
    times = []
    for _ in range(args.iters + 1):  # the first call compiles
        begin = time.perf_counter()
        syn, opt_state, loss, _ = step(syn, opt_state, *arguments)
        jax.block_until_ready(syn)
        times.append(time.perf_counter() - begin)
    extra = {}
    if args.stability:  # what `distill mkdt` adds every distill.stability_every iterations
        check = jax.jit(functools.partial(unroll_stability, masked_mse(model.apply), iterations=20,
                                          inner_dtype=dtype))
        check_times = []
        for _ in range(2):  # the first call compiles
            begin = time.perf_counter()
            jax.block_until_ready(check(syn, start, jnp.asarray(idx), jnp.asarray(mask),
                                        jax.random.key(2)))
            check_times.append(time.perf_counter() - begin)
        extra = {"stability_check_s": round(check_times[1], 2),
                 "stability_check_over_iteration": round(check_times[1] / min(times[1:]), 2)}
    return times, extra


def time_torch(args) -> tuple[list[float], dict]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    width, depth = args.width, 3
    shapes = []
    channels = 3
    for _ in range(depth):
        shapes += [(width, channels, 3, 3), (width,), (width,), (width,)]
        channels = width
    shapes += [(args.dim, width * 4 * 4), (args.dim,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def forward(flat, x):
        parts = list(torch.split(flat, sizes))
        views = [p.view(s) for p, s in zip(parts, shapes)]
        for block in range(depth):
            w, b, gamma, beta = views[4 * block:4 * block + 4]
            x = F.conv2d(x, w, b, padding=1)
            x = F.group_norm(x, width, gamma, beta, eps=1e-5)
            x = F.avg_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), views[-2], views[-1])

    def random_flat(seed):
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([torch.empty(n).uniform_(-0.05, 0.05, generator=generator) for n in sizes])

    start, target = random_flat(0), random_flat(1)
    images, targets = data(args.num_syn, args.dim)
    x_syn = torch.tensor(images).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    y_syn = torch.tensor(targets).requires_grad_(True)
    lr = torch.tensor(0.1, requires_grad=True)
    optimizers = [torch.optim.SGD([x_syn], lr=1000.0, momentum=0.5),
                  torch.optim.SGD([y_syn], lr=1.0, momentum=0.5),
                  torch.optim.SGD([lr], lr=1e-4, momentum=0.5)]
    idx, mask = schedule(args.num_syn, args.batch, args.syn_steps)
    batches = [torch.tensor(i[m > 0], dtype=torch.long) for i, m in zip(idx, mask)]
    times = []
    for _ in range(args.iters + 1):
        begin = time.perf_counter()
        theta = start.clone().requires_grad_(True)
        for chunk in batches:
            loss = F.mse_loss(forward(theta, x_syn[chunk]), y_syn[chunk])
            grad = torch.autograd.grad(loss, theta, create_graph=True)[0]
            theta = theta - lr * grad
        match = ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()
        for optimizer in optimizers:
            optimizer.zero_grad()
        match.backward()
        for optimizer in optimizers:
            optimizer.step()
        times.append(time.perf_counter() - begin)
    return times, {}


def run_one(args) -> None:
    times, extra = (time_jax if args.one == "jax" else time_torch)(args)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB
    print(json.dumps({"impl": args.one, "syn_steps": args.syn_steps, "num_syn": args.num_syn,
                      "batch": args.batch, "width": args.width, "inner_dtype": args.inner_dtype,
                      "remat": not args.no_remat, "experts_per_step": args.experts_per_step, "first_call_s": round(times[0], 2),
                      "seconds_per_iteration": round(min(times[1:]), 2), "peak_rss_gib": round(peak_gib, 2),
                      **extra}),
          flush=True)


def sweep(args) -> None:
    results = {}
    for steps in args.syn_steps:
        for impl in args.impls:
            command = [sys.executable, __file__, "--one", impl, "--syn-steps", str(steps),
                       "--num-syn", str(args.num_syn), "--batch", str(args.batch), "--width", str(args.width),
                       "--iters", str(args.iters), "--inner-dtype", args.inner_dtype, "--conv-impl", args.conv_impl,
                       "--experts-per-step", str(args.experts_per_step)]
            if args.no_remat:
                command.append("--no-remat")
            if args.stability:
                command.append("--stability")
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[(impl, steps)] = json.loads(out.strip().splitlines()[-1])
            print(out.strip().splitlines()[-1], flush=True)
    for steps in args.syn_steps:
        if ("jax", steps) in results and ("torch", steps) in results:
            jax_s, torch_s = results[("jax", steps)], results[("torch", steps)]
            print(json.dumps({"syn_steps": steps, "ddjax_over_pytorch_time": round(
                jax_s["seconds_per_iteration"] / torch_s["seconds_per_iteration"], 3),
                "ddjax_over_pytorch_memory": round(jax_s["peak_rss_gib"] / torch_s["peak_rss_gib"], 3)}))
    jax_runs = [results[("jax", s)] for s in args.syn_steps if ("jax", s) in results]
    if len(jax_runs) > 1:
        print(json.dumps({"ddjax_peak_memory_ratio_last_over_first": round(
            jax_runs[-1]["peak_rss_gib"] / jax_runs[0]["peak_rss_gib"], 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=["jax", "torch"], help="run a single configuration in this process")
    parser.add_argument("--impls", nargs="+", default=["jax", "torch"])
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--num-syn", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations after the first")
    parser.add_argument("--inner-dtype", default="float32")
    parser.add_argument("--conv-impl", default="auto")
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--experts-per-step", type=int, default=1, help="ddjax only: vmapped experts per step")
    parser.add_argument("--stability", action="store_true",
                        help="ddjax only: also time one stability check (mkdt/stability.py)")
    args = parser.parse_args()
    if args.one:
        args.syn_steps = args.syn_steps[0]
        run_one(args)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
