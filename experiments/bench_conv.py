"""Benchmark: one 3x3 convolution layer, forward, first- and second-order gradients, per conv_impl.

The second-order figure is what the MKDT/MTT unroll pays per convolution: the gradient w.r.t.
input and kernel of the squared norm of an inner gradient (as in ``tests/models/test_conv.py``).
Prints one JSON line per (shape, implementation) with the best of `--repeats` timed calls after a
compiling one.

    python experiments/bench_conv.py                                  # MKDT ConvNet's three layers
    python experiments/bench_conv.py --shapes 32x8x32 32x16x32 --impls im2col winograd
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.models.conv import conv2d


def best_ms(fn, args, repeats: int) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - begin)
    return round(1e3 * min(times), 1)


def orders(impl: str):
    """(forward, first order, second order) functions of (x, kernel) for one implementation."""
    conv = lambda x, k: conv2d(x, k, padding=1, impl=impl)
    inner = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)))
    first = jax.grad(inner, argnums=(0, 1))
    second = jax.grad(lambda x, k: jnp.sum(jax.grad(inner, argnums=1)(x, k) ** 2), argnums=(0, 1))
    return conv, first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32x3x128", "16x128x128", "8x128x128"],
                        help="SIDExCINxCOUT of each layer (MKDT's ConvNet width 128 on 32x32 by default)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--impls", nargs="+", default=["im2col", "winograd"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        side, cin, cout = (int(v) for v in shape.split("x"))
        x = jnp.asarray(rng.normal(size=(args.batch, side, side, cin)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
        for impl in args.impls:
            forward, first, second = orders(impl)
            print(json.dumps({"shape": shape, "batch": args.batch, "impl": impl,
                              "forward_ms": best_ms(forward, (x, kernel), args.repeats),
                              "first_order_ms": best_ms(first, (x, kernel), args.repeats),
                              "second_order_ms": best_ms(second, (x, kernel), args.repeats)}),
                  flush=True)


if __name__ == "__main__":
    main()
