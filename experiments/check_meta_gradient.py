"""Compare the exact lr meta-gradient (``jax.grad`` through the unroll) with central differences
of the matching loss, for a distillation workdir's first expert, at several unroll lengths.

    python experiments/check_meta_gradient.py --config experiments/cpu_cifar10.py \\
        --workdir /tmp/cpu_run/wd --steps 8 12 16 20

Prints one JSON line per unroll length. Where the two part, the unrolled map is chaotic at that
length and its exact gradient is not a useful descent direction (see experiments/README.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.config import load_config
from ddjax.mkdt.distill_stage import init_indices
from ddjax.mkdt.mtt import make_meta_loss, masked_mse
from ddjax.mkdt.sampling import SyntheticBatches
from ddjax.mkdt.student import load_representations, student_model, student_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16, 20])
    parser.add_argument("--h", type=float, default=1e-3, help="finite-difference step on the lr")
    args = parser.parse_args()
    config, workdir = load_config(args.config), Path(args.workdir).absolute()
    rows = student_rows(config, workdir)
    targets = load_representations(config, workdir, rows.spec, len(rows))
    indices = init_indices(config, workdir)
    (images, _), _ = rows.read(indices)
    store = TrajectoryStore.open(TRAJECTORIES.locate(workdir))
    expert = store.complete_experts()[0]
    start, target = store.load_epoch(expert, 0), store.load_epoch(expert, config.distill.expert_epochs)
    model = student_model(config, store.meta["num_outputs"], images.shape[1:3])
    lr = config.distill.lr_init
    syn = {"images": jnp.asarray(images), "targets": jnp.asarray(targets[indices]),
           "lr": jnp.asarray(lr, jnp.float32)}
    meta_loss = make_meta_loss(masked_mse(model.apply))
    value, grad = jax.jit(meta_loss), jax.jit(jax.grad(meta_loss))
    idx, mask = SyntheticBatches(len(indices), config.distill.batch_syn).next_steps(
        max(args.steps), np.random.default_rng(0))
    for steps in args.steps:
        batch = (start, target, jnp.asarray(idx[:steps]), jnp.asarray(mask[:steps]))
        at = lambda x: float(value(dict(syn, lr=jnp.asarray(x, jnp.float32)), *batch))
        print(json.dumps({"steps": steps, "loss": at(lr), "grad_lr": float(grad(syn, *batch)["lr"]),
                          "central_difference": (at(lr + args.h) - at(lr - args.h)) / (2 * args.h)}),
              flush=True)


if __name__ == "__main__":
    main()
