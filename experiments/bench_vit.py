"""Benchmark: ViT backbone throughput, forward and forward+backward (to the images, as LGM needs).

Times the compiled feature function of a named backbone (default ``dinov2_vitb14`` at its 224 x 224
resolution, random weights) on random images: ``forward`` is the features of a batch,
``forward+backward`` the gradient of a random linear read-out of the features with respect to the
images (a vector-Jacobian product through the frozen backbone). Each configuration (dtype,
``jax.checkpoint`` on blocks) prints one JSON line with images/s, the best of ``--repeats`` timed
calls after one compile call, and the 1-minute load average (other processes on the machine
lower the figures). ``--torch`` adds the same network built from ``torch.nn`` layers,
timed the same way on the same machine, for comparison.

    python experiments/bench_vit.py --batch 8 --repeats 3 --torch
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.backbones.vit import ViT, param_shapes
from ddjax.backbones.vit_configs import get_variant


def _best_time(fn, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, compile_s


def bench_jax(name: str, batch: int, repeats: int, dtypes, remats, modes):
    variant = get_variant(name)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32),
        param_shapes(variant.config),
    )
    x = jnp.asarray(
        rng.standard_normal((batch, variant.resolution, variant.resolution, 3)), jnp.float32
    )
    readout = jnp.asarray(rng.standard_normal((batch, variant.config.feature_dim)), jnp.float32)
    for dtype in dtypes:
        for remat in remats:
            model = ViT(variant.config, dtype=jnp.dtype(dtype), remat=remat)
            forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
            backward = jax.jit(
                jax.grad(lambda x, p: jnp.sum(model.apply({"params": p}, x) * readout))
            )
            for mode in modes:
                if mode == "forward" and remat and len(remats) > 1:
                    continue  # remat changes nothing without a backward pass
                fn = (
                    (lambda: forward(params, x))
                    if mode == "forward"
                    else (lambda: backward(x, params))
                )
                seconds, compile_s = _best_time(fn, repeats)
                print(
                    json.dumps(
                        {
                            "impl": "ddjax",
                            "backbone": variant.name,
                            "resolution": variant.resolution,
                            "batch": batch,
                            "dtype": dtype,
                            "remat": remat,
                            "mode": mode,
                            "images_per_s": round(batch / seconds, 3),
                            "seconds_per_batch": round(seconds, 3),
                            "compile_s": round(compile_s, 1),
                            "device": jax.devices()[0].device_kind,
                            "load_avg_1min": round(os.getloadavg()[0], 2),
                        }
                    ),
                    flush=True,
                )


def bench_torch(batch: int, repeats: int, modes):
    """The same computation in PyTorch: a pre-norm ViT-B/14 (patch conv, class token, 12 blocks of
    768 wide, 12 heads, MLP 3072, GELU) from ``torch.nn`` layers, 257 tokens at 224."""
    import torch

    class TorchViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 768, 14, 14)
            self.cls = torch.nn.Parameter(torch.zeros(1, 1, 768))
            self.pos = torch.nn.Parameter(torch.zeros(1, 257, 768))
            layer = torch.nn.TransformerEncoderLayer(
                768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.blocks = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(768, eps=1e-6)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
            return self.norm(self.blocks(x)[:, 0])

    net = TorchViT().eval()
    x = torch.randn(batch, 3, 224, 224)
    readout = torch.randn(batch, 768)
    for mode in modes:

        def step():
            if mode == "forward":
                with torch.no_grad():
                    return net(x)
            xg = x.clone().requires_grad_(True)
            return torch.autograd.grad((net(xg) * readout).sum(), xg)[0]

        step()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "impl": f"torch {torch.__version__}",
                    "resolution": 224,
                    "batch": batch,
                    "dtype": "float32",
                    "mode": mode,
                    "images_per_s": round(batch / best, 3),
                    "seconds_per_batch": round(best, 3),
                    "threads": torch.get_num_threads(),
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_vitb14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--remat", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["forward", "forward+backward"],
        choices=["forward", "forward+backward"],
    )
    parser.add_argument(
        "--torch", action="store_true", help="also time a PyTorch ViT-B/14 (float32)"
    )
    args = parser.parse_args()
    bench_jax(
        args.backbone,
        args.batch,
        args.repeats,
        args.dtypes,
        [r == "on" for r in args.remat],
        args.modes,
    )
    if args.torch:
        bench_torch(args.batch, args.repeats, args.modes)


if __name__ == "__main__":
    main()
