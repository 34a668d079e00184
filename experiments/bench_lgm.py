"""Benchmark: one LGM distillation step, time and memory vs augmentation rounds A and probes K.

Times the compiled training step of ``ddjax.lgm.step`` (decode the pyramid, augment and embed the
real batch and the A synthetic copies, K probe gradients, meta-gradient, Adam) on random data with
CIFAR shapes, ipc images per class for 10 classes. Memory is XLA's own account of the compiled
step (arguments + outputs + temporaries, ``compiled.memory_analysis()``), which is the peak the
step needs on the device; ``--chunk`` adds the exact chunked meta-gradient for comparison. The
backbone is ``--backbone`` (any spec ``load_backbone`` takes) or, by default, a randomly
initialised ConvNet-BN of width 32 (the CPU teacher's architecture; time does not depend on the
weights). Prints one JSON line per configuration.

    python experiments/bench_lgm.py --augs 1 3 10 --probes 1 4 16 --chunk 0 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from ddjax.backbones import Backbone, load_backbone
from ddjax.lgm import pyramid
from ddjax.lgm.step import LgmProblem, lgm_optimizer, make_train_step
from ddjax.models import build_model, init_params


def default_backbone(resolution: int = 32) -> Backbone:
    model = build_model("convnet_bn", num_outputs=0, width=32, image_size=resolution)
    variables = init_params(model, jax.random.key(0), resolution)

    def features(variables, x):
        return model.apply(variables, x, train=False).reshape(x.shape[0], -1)

    return Backbone(name="convnet_bn-w32-random", features=features, variables=variables,
                    resolution=resolution, mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2023, 0.1994, 0.2010),
                    feature_dim=32 * (resolution // 8) ** 2)


def measure(backbone: Backbone, augs: int, probes: int, chunk: int, ipc: int, classes: int,
            syn_res: int, repeats: int) -> dict:
    problem = LgmProblem(features=backbone.features, mean=backbone.mean, std=backbone.std,
                         feature_dim=backbone.feature_dim, num_classes=classes,
                         crop_res=backbone.resolution, syn_res=syn_res, augs=augs,
                         num_probes=probes,
                         chunk_size=chunk)
    step = make_train_step(problem, 2e-3)
    levels = pyramid.init_levels(jax.random.key(0), ipc * classes, mode="pyramid", syn_res=syn_res)
    active = 1
    while active < len(levels):   # time the final, deepest pyramid
        levels, active = pyramid.extend_levels(levels, active, jax.random.key(active))
    opt_state = lgm_optimizer(2e-3).init(levels)
    mask = pyramid.active_mask(active, len(levels))
    batch = ipc * augs * classes
    rng = np.random.default_rng(0)
    x_real = rng.integers(0, 256, (batch, syn_res, syn_res, 3), dtype=np.uint8)
    y_real = rng.integers(0, classes, batch).astype(np.int32)
    syn_labels = np.repeat(np.arange(classes, dtype=np.int32), ipc)
    args = (levels, opt_state, mask, backbone.variables, x_real, y_real, syn_labels,
            jax.random.key(1))
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    times = []
    for i in range(repeats + 1):
        call = args[:-1] + (jax.random.key(i),)
        start = time.perf_counter()
        out = compiled(*call)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    peak = None
    if memory is not None:
        peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return {"augs": augs, "probes": probes, "chunk": chunk, "real_batch": batch, "syn_batch": batch,
            "step_s_median": round(statistics.median(times[1:]), 4),
            "step_s_min": round(min(times[1:]), 4),
            "compile_s": round(compile_s, 2),
            "xla_peak_mib": None if peak is None else round(peak / 2**20, 1),
            "xla_temp_mib": None if memory is None else round(memory.temp_size_in_bytes / 2**20, 1),
            "device": jax.default_backend()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="",
                        help="backbone spec; default: random ConvNet-BN w32")
    parser.add_argument("--augs", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--chunk", type=int, nargs="+", default=[0], help="0: unchunked")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--syn-res", type=int, default=0, help="0: the backbone's resolution")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backbone = load_backbone(args.backbone) if args.backbone else default_backbone()
    syn_res = args.syn_res or backbone.resolution
    for augs in args.augs:
        for probes in args.probes:
            for chunk in args.chunk:
                row = measure(backbone, augs, probes, chunk, args.ipc, args.classes, syn_res,
                              args.repeats)
                print(json.dumps(dict(row, backbone=backbone.name)), flush=True)


if __name__ == "__main__":
    main()
