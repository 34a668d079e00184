"""Benchmark: how the hot stages scale over devices, and what the host adds to each iteration.

``--steps``: the jitted step of each hot stage (MKDT outer iteration, a KD-expert group's epoch,
the teacher's step) on 1, 2, 4 and 8 devices, each device count in its own process (virtual CPU
devices here, where the figures measure the layout's overhead, not a speed-up: the 8 "devices"
share this machine's cores). Sizes are small (``--width``, ``--batch``); the layout is ddjax's
own (``ddjax.mesh``), as the stages use it.

``--host-overhead W [--method mkdt|lgm]``: ``ddjax distill mkdt`` (or ``lgm``) on a copy of
workdir W's inputs (represent, experts, select; or the teacher: e.g. the smoke chain's),
``--iterations`` long: wall time per iteration of the stage loop (from its metrics' time stamps,
compilation and the last record excluded) minus the jitted step alone on the same inputs (timed
after the run, blocking on each call).

    python experiments/bench_scaling.py --steps --devices 1 2 4 8
    python experiments/bench_scaling.py --host-overhead runs/smoke
    python experiments/bench_scaling.py --host-overhead runs/smoke --method lgm --iterations 200

``--stream teacher|experts``: the stage (the config's, ``--epochs`` long) with the train split in
memory and with ``data.stream=True`` (each batch read from the data source, a step or two
ahead; the experts: one program per step instead of one per epoch): the median wall time of the
epochs after the first (compilation excluded) and the ratio. The experts need representations
of the train split (``--set experts.representations=DIR``).

    python experiments/bench_scaling.py --stream teacher --set data.train_subset=10000
    python experiments/bench_scaling.py --stream experts --config experiments/cpu_cifar10.py:repro \
        --set experts.representations=runs/cpu_repro/represent/representations \
        --set experts.num_experts=1 --set experts.experts_per_program=1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_seconds(fn, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def mkdt_step(args):
    """One outer iteration: replicated learnables, the minibatch split over the data axis."""
    import jax

    from ddjax import mesh
    from ddjax.mkdt.mtt import make_meta_loss, make_outer_step, masked_mse, outer_optimizer
    from ddjax.mkdt.sampling import SyntheticBatches
    from ddjax.models import build_model
    from ddjax.models.registry import dummy_input

    model = build_model("convnet", num_outputs=args.dim, width=args.width)
    init = lambda k: model.init(k, dummy_input((32, 32)))["params"]  # noqa: E731
    rng = np.random.default_rng(0)
    syn = mesh.replicate({"images": rng.normal(size=(args.num_syn, 32, 32, 3)).astype(np.float32),
                          "targets": rng.normal(size=(args.num_syn, args.dim)).astype(np.float32),
                          "lr": np.float32(0.1)})
    optimizer = outer_optimizer(1000.0, 1.0, 1e-4)
    step = make_outer_step(make_meta_loss(masked_mse(model.apply), constrain=mesh.constrain_batch),
                           optimizer)
    idx, mask = SyntheticBatches(args.num_syn, args.batch).next_steps(args.syn_steps, rng)
    stack = lambda p: jax.tree.map(lambda x: x[None], p)  # noqa: E731
    inputs = (syn, mesh.replicate(optimizer.init(syn)), *mesh.replicate(
        (stack(init(jax.random.key(0))), stack(init(jax.random.key(1))), idx[None], mask[None],
         jax.random.split(jax.random.key(2), 1))))
    return step, inputs


def expert_epoch(args):
    """A group of KD experts (one per device at 8) for a few steps of an epoch."""
    import jax

    from ddjax import mesh
    import jax.numpy as jnp

    from ddjax.mkdt.experts import make_student_epoch, torch_sgd
    from ddjax.models import build_model
    from ddjax.models.registry import dummy_input

    model = build_model("convnet", num_outputs=args.dim, width=args.width)
    n, experts = args.batch * args.expert_steps, args.experts
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    targets = rng.normal(size=(n, args.dim)).astype(np.float32)
    params = jax.vmap(lambda k: model.init(k, dummy_input((32, 32)))["params"])(
        jax.random.split(jax.random.key(0), experts))
    optimizer = torch_sgd(0.1, 0.9, 5e-4)

    def loss_fn(p, state, x, y):  # MKDT's KD loss: MSE to the teacher's representations
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2), state

    epoch = jax.jit(make_student_epoch(loss_fn, optimizer, args.batch))
    perms = np.stack([rng.permutation(n) for _ in range(experts)]).astype(np.int32)
    inputs = (*mesh.shard((params, {}, jax.vmap(optimizer.init)(params))),
              *mesh.replicate((images, targets)),
              *mesh.shard((perms, jax.random.split(jax.random.key(1), experts))))
    return epoch, inputs


def teacher_step(args):
    """The Barlow Twins teacher's step, data parallel over the global batch."""
    import jax

    from ddjax import mesh
    from ddjax.models import build_model
    from ddjax.ssl.recipes import barlow_twins_cifar
    from ddjax.ssl.train import init_ssl_state, make_ssl_train_step

    recipe = dataclasses.replace(barlow_twins_cifar(), batch_size=args.batch,
                                 projector_hidden_dims=(512, 512), projector_output_dim=512)
    model = build_model("convnet_bn", width=args.width)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    projector, optimizer = recipe.projector(), recipe.optimizer(100)
    state = init_ssl_state(jax.random.key(0), model, projector, optimizer, images[:1])
    step_fn = make_ssl_train_step(model, projector, recipe.loss_fn(), optimizer, recipe.augment,
                                  (0.5,) * 3, (0.25,) * 3)
    step = jax.jit(lambda s, x, k: step_fn(s, mesh.constrain_batch(x), k))
    return step, (mesh.replicate(state), mesh.replicate(images), jax.random.key(1))


STEPS = {"mkdt_outer": mkdt_step, "expert_epoch": expert_epoch, "teacher": teacher_step}


def measure_here(args) -> dict:
    import jax

    from ddjax import mesh

    mesh.build()
    out = {"devices": jax.device_count()}
    for name, build in STEPS.items():
        fn, inputs = build(args)
        out[name] = round(_median_seconds(fn, inputs, args.repeats) * 1e3, 2)
    return out


def sweep_steps(args) -> None:
    print("| devices | " + " | ".join(f"{k} (ms)" for k in STEPS) + " |")
    print("|---|" + "---|" * len(STEPS))
    base = None
    for devices in args.devices:
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
        command = [sys.executable, __file__, "--one", *sys.argv[1:]]
        line = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        row = json.loads(line.strip().splitlines()[-1])
        base = base or row
        print(f"| {devices} | " + " | ".join(f"{row[k]} ({row[k] / base[k]:.2f}x)" for k in STEPS)
              + " |", flush=True)


# What ``--host-overhead`` runs per method: the stage module, its step factory, the stage
# directories it copies from W, where its metrics are, and its settings for the measurement.
OVERHEAD = {
    "mkdt": ("ddjax.mkdt.distill_stage", "make_outer_step", ("represent", "experts", "select"),
             "distill", lambda n: [f"distill.iterations={n}", "distill.stability_every=0",
                                   f"distill.checkpoint_every={n}", f"distill.save_every={n}"]),
    "lgm": ("ddjax.lgm.distill_stage", "make_train_step", ("teacher",), "lgm",
            lambda n: [f"lgm.iterations={n}", f"lgm.log_every={max(1, n // 10)}",
                       f"lgm.checkpoint_every={10 * n}", "lgm.image_log_every=0"]),
}


def host_overhead(args) -> None:
    """Per-iteration wall time of ``distill mkdt`` or ``distill lgm`` minus its jitted step
    alone (called back to back on the inputs of the run's last step)."""
    import importlib

    import jax

    from ddjax.cli import main as cli

    module_name, factory, inputs, directory, settings = OVERHEAD[args.method]
    stage_module = importlib.import_module(module_name)
    captured = {}
    real = getattr(stage_module, factory)

    def capturing(*a, **k):
        step = real(*a, **k)

        def wrapped(*inputs):
            captured["inputs"] = inputs
            return step(*inputs)

        captured["step"] = step
        return wrapped

    setattr(stage_module, factory, capturing)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        for name in inputs:
            if (Path(args.host_overhead) / name).exists():
                shutil.copytree(Path(args.host_overhead) / name, work / name)
        argv = ["distill", args.method, "--config", args.config, "--workdir", str(work)]
        for item in settings(args.iterations) + args.set:
            argv += ["--set", item]
        if cli(argv) != 0:
            raise SystemExit(f"the distill {args.method} run failed")
        records = [json.loads(line) for line in
                   (work / directory / "metrics.jsonl").read_text().splitlines()]
    # Between the second and the next-to-last record: past compilation (and LGM's pyramid
    # growth at its first extensions), before the final writes.
    first, last = records[1], records[-2]
    per_iteration = (last["time"] - first["time"]) / (last["step"] - first["step"])
    alone = _median_seconds(captured["step"], captured["inputs"], args.repeats * 5)
    print(json.dumps({"method": args.method, "iterations": args.iterations,
                      "devices": jax.device_count(),
                      "wall_per_iteration_ms": round(per_iteration * 1e3, 2),
                      "step_alone_ms": round(alone * 1e3, 2),
                      "host_overhead_ms": round((per_iteration - alone) * 1e3, 2)}))


# The stage's settings for --stream, and the seconds of each epoch after the first from its
# metrics records.
STREAMED = {
    "teacher": ([lambda e: f"teacher.epochs={e}", lambda e: "teacher.knn_every=0"],
                lambda records: [r["train_seconds"] for r in records if "train_seconds" in r][1:]),
    "experts": ([lambda e: f"experts.epochs={e}"],  # from epoch 1's end: compilation excluded
                lambda records: np.diff([r["time"] for r in records]).tolist()),
}


def stream_cost(args) -> None:
    """Epoch time of a stage with the split in memory and streamed from its source."""
    from ddjax.cli import main as cli

    settings, epoch_seconds = STREAMED[args.stream]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stream in (False, True):
            work = Path(tmp) / f"stream_{stream}"
            argv = [args.stream, "--config", args.config, "--workdir", str(work)]
            for item in [*(f(args.epochs) for f in settings), f"data.stream={stream}", *args.set]:
                argv += ["--set", item]
            if cli(argv) != 0:
                raise SystemExit(f"the {args.stream} run failed")
            records = [json.loads(line) for line in
                       (work / args.stream / "metrics.jsonl").read_text().splitlines()]
            seconds[stream] = epoch_seconds(records)
    memory, streamed = (float(np.median(seconds[s])) for s in (False, True))
    print(json.dumps({"epochs_timed": len(seconds[False]), "memory_epoch_s": round(memory, 2),
                      "streamed_epoch_s": round(streamed, 2),
                      "streamed_over_memory": round(streamed / memory, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", action="store_true", help="step time per device count")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-syn", type=int, default=256)
    parser.add_argument("--syn-steps", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--expert-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--host-overhead", metavar="W", help="a workdir with the stage's inputs "
                        "(mkdt: represent, experts, select; lgm: its teacher)")
    parser.add_argument("--method", choices=sorted(OVERHEAD), default="mkdt")
    parser.add_argument("--config", default=None, help="default: experiments/smoke.py (:lgm)")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--stream", choices=sorted(STREAMED),
                        help="the stage's epoch time, split in memory against data.stream")
    parser.add_argument("--epochs", type=int, default=3, help="--stream's epochs")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    if args.config is None:
        args.config = "experiments/smoke.py" + (":lgm" if args.method == "lgm" else "")
    if args.one:
        print(json.dumps(measure_here(args)))
    elif args.host_overhead:
        host_overhead(args)
    elif args.steps:
        sweep_steps(args)
    elif args.stream:
        stream_cost(args)
    else:
        parser.error("give --steps, --host-overhead W or --stream STAGE")


if __name__ == "__main__":
    main()
