"""Device check: numerics and the paper-size costs of MKDT and LGM on one accelerator, as JSON.

    python experiments/device_check.py --out DIR            # full sizes, about 7 min on one H200
    python experiments/device_check.py --tiny --out DIR     # tiny shapes: a CPU smoke run

Four parts, each on synthetic random data (no data set, no weights files, no network):

1. ``numerics``: ddjax's convolutions (lax, im2col, winograd), the ConvNet student's forward pass,
   its inner-loss gradient and an unrolled meta-gradient on the device in float32, against a
   float64 reference (numpy's ``tests/models/reference_numpy.py`` for the forward passes, JAX in
   float64 on the host CPU for the gradients), at the default matmul precision (TF32 on recent
   NVIDIA GPUs) and at ``'highest'``, and the same in float32 on the host CPU as the baseline of
   plain float32 rounding; plus the float64 cases of ``tests/models/test_conv.py`` run on the
   device itself.
2. ``mkdt_outer``: one MKDT outer iteration at the paper's CIFAR-10 2% size (40 inner steps, 1,000
   synthetic 32x32x3 images, batch_syn 256, ConvNet width 128 depth 3 instance norm, 512-d
   targets, one expert per step, remat), built from ``ddjax.mkdt.mtt`` as
   ``experiments/bench_distill.py`` builds it; float32 and ``inner_dtype=bfloat16``.
3. ``experts``: vmapped KD-expert training (``ddjax.mkdt.experts.make_student_epoch``) at
   E = 1, 10, 50 experts, batch 256, the same student, on 50,000 random images.
4. ``lgm_vit``: one LGM distillation step (``ddjax.lgm.step``) through a randomly initialised
   DINOv2 ViT-B/14 at 224x224 in bfloat16 with the reference's per-step work (ImageNet-100, ipc 1,
   A = 10: 1,000 real and 1,000 synthetic views, 256x256 images and pyramid).

A part that raises is recorded with its error and the next part runs. ``DIR/device_check.json``
is rewritten after every measurement, so a run stopped by a timeout still leaves what finished.
Each part has a time budget (``--budget`` seconds in all): past it, optional repeats and
configurations are skipped and marked so. One progress line per part goes to stderr, a one-line
JSON summary to stdout. See experiments/README.md#device-check.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python experiments/device_check.py`: ddjax from this tree
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

OUT_NAME = "device_check.json"
ASSUMED_PEAK_BF16_TFLOPS = 989.0  # H200 SXM dense bf16, NVIDIA's data sheet
CIFAR_TRAIN = 50_000
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "XLA_PYTHON_CLIENT_ALLOCATOR", "NVIDIA_TF32_OVERRIDE", "JAX_DEFAULT_MATMUL_PRECISION",
            "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")


@dataclasses.dataclass(frozen=True)
class Sizes:
    # numerics
    conv_test_cases: int  # how many of CONV_TEST_CASES run in float64 on the device
    conv_cases: tuple  # (batch, side, cin, cout)
    net_width: int
    depth: int  # of every ConvNet (MKDT's student: 3 at 32x32)
    net_side: int
    net_batch: int
    net_outputs: int
    # mkdt_outer
    syn_steps: int
    num_syn: int
    batch_syn: int
    width: int
    dim: int
    repeats: int
    # experts
    experts: tuple
    expert_images: int
    expert_steps: int
    expert_batch: int
    # lgm_vit
    vit_tiny: bool
    classes: int
    ipc: int
    augs: int
    crop_res: int
    syn_res: int


FULL = Sizes(conv_test_cases=7, conv_cases=((8, 32, 3, 128), (8, 16, 128, 128)), net_width=128,
             depth=3, net_side=32, net_batch=8, net_outputs=512,
             syn_steps=40, num_syn=1000, batch_syn=256, width=128, dim=512, repeats=5,
             experts=(1, 10, 50), expert_images=CIFAR_TRAIN, expert_steps=20, expert_batch=256,
             vit_tiny=False, classes=100, ipc=1, augs=10, crop_res=224, syn_res=256)
TINY = Sizes(conv_test_cases=2, conv_cases=((2, 8, 3, 4), (2, 8, 16, 8)), net_width=8, depth=1,
             net_side=16, net_batch=2, net_outputs=6,
             syn_steps=2, num_syn=16, batch_syn=8, width=8, dim=32, repeats=2,
             experts=(1, 2), expert_images=64, expert_steps=2, expert_batch=16,
             vit_tiny=True, classes=4, ipc=1, augs=2, crop_res=32, syn_res=32)

# Fractions of --budget per part (the compiles cannot be cut short; repeats and extras can).
BUDGET_SHARES = {"numerics": 0.12, "mkdt_outer": 0.36, "experts": 0.26, "lgm_vit": 0.26}


# --------------------------------------------------------------------------------------- helpers


def _load(relpath: str, name: str):
    """A module of this tree by file path (``tests`` and ``experiments`` are not packages)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _x64():
    """float64 enabled inside (``jax.enable_x64``, else the global flag, restored after)."""
    manager = getattr(jax, "enable_x64", None)
    if manager is not None:
        with manager(True):
            yield
        return
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@contextlib.contextmanager
def _section(res: dict, key: str, holder: dict | None = None):
    """One measurement of a part: an exception inside is recorded under ``holder[key]`` (default
    ``res[key]``) and in ``res['section_errors']`` (the part's status becomes 'partial'), and the
    part goes on."""
    holder = res if holder is None else holder
    try:
        yield
    except Exception as error:  # noqa: BLE001
        entry = holder.get(key)
        if not isinstance(entry, dict):
            entry = holder[key] = {}
        entry["error"] = f"{type(error).__name__}: {error}"[:2000]
        entry["traceback"] = traceback.format_exc()[-3000:]
        res.setdefault("section_errors", []).append(key)


def _float(x, digits: int = 4):
    """A JSON number with ``digits`` significant digits (None stays None)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.{digits}g}")


def _errors(got, want) -> dict:
    """Max abs error, max abs error / max |ref| and the norm-wise relative error, over a pytree."""
    got_leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(got)]
    want_leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(want)]
    assert len(got_leaves) == len(want_leaves)
    max_abs = max(float(np.max(np.abs(g - w))) if g.size else 0.0
                  for g, w in zip(got_leaves, want_leaves))
    scale = max(float(np.max(np.abs(w))) if w.size else 0.0 for w in want_leaves)
    diff = math.sqrt(sum(float(np.sum((g - w) ** 2)) for g, w in zip(got_leaves, want_leaves)))
    norm = math.sqrt(sum(float(np.sum(w ** 2)) for w in want_leaves))
    finite = all(bool(np.all(np.isfinite(g))) for g in got_leaves)
    return {"max_abs": _float(max_abs),
            "max_abs_over_max_ref": _float(max_abs / scale if scale else 0.0),
            "rel_l2": _float(diff / norm if norm else 0.0), "finite": finite}


def _peak_bytes():
    """The device allocator's peak since the process started (None where not reported)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def _gib(n):
    return None if n is None else _float(n / 2**30)


def _xla_memory(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return {"total_gib": _gib(total), "temp_gib": _gib(m.temp_size_in_bytes),
            "argument_gib": _gib(m.argument_size_in_bytes)}


def _xla_flops(compiled):
    """XLA's own FLOP count of a compiled program (its cost analysis counts a loop body once)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _sub_jaxprs(params):
    for value in params.values():
        for item in (value if isinstance(value, (tuple, list)) else (value,)):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def jaxpr_flops(jaxpr) -> tuple[float, int]:
    """(FLOPs of the matrix products and convolutions, number of while loops) of a jaxpr: scan
    bodies count ``length`` times, a cond its costliest branch, a while loop's body once.
    Everything the program computes is counted, rematerialised forward passes included."""
    total, whiles = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / rhs[out_feature]
        subs = [jaxpr_flops(s) for s in _sub_jaxprs(eqn.params)]
        if not subs:
            continue
        whiles += sum(w for _, w in subs) + (name == "while")
        if name == "cond":
            total += max(f for f, _ in subs)
        elif name == "scan":
            total += eqn.params["length"] * sum(f for f, _ in subs)
        else:
            total += sum(f for f, _ in subs)
    return total, whiles


def traced_flops(fn, *args):
    closed = jax.make_jaxpr(fn)(*args)
    flops, whiles = jaxpr_flops(closed.jaxpr)
    return flops, whiles


def _random_tree(shapes, rng: np.random.Generator, scale: float):
    """N(0, scale^2) float32 arrays of the given shapes, drawn by numpy (no compiled programs)."""
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape, np.float32)),
                        shapes)


class Context:
    """Sizes, budgets and the JSON record of one run; ``flush()`` rewrites the JSON file."""

    def __init__(self, out: Path, sizes: Sizes, tiny: bool, budget: float, parts: list[str]):
        self.out, self.sizes, self.tiny = out, sizes, tiny
        self.start = time.perf_counter()
        self.deadlines, elapsed = {}, 0.0
        for name in parts:  # cumulative: time a part leaves unused goes to the next
            elapsed += budget * BUDGET_SHARES.get(name, 0.25)
            self.deadlines[name] = self.start + elapsed
        self.part = None
        self.record = {"meta": {}, "parts": {}, "finished": False}

    def left(self) -> float:
        """Seconds left in the running part's budget."""
        return self.deadlines[self.part] - time.perf_counter()

    def flush(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        tmp = self.out / (OUT_NAME + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / OUT_NAME)


def _time_calls(call, ctx: Context, max_repeats: int, min_repeats: int = 1) -> list[float]:
    """Wall seconds of ``call()`` (blocked until ready), at least ``min_repeats`` times, then more
    while the part's budget allows, up to ``max_repeats``."""
    times = []
    while len(times) < max_repeats and (len(times) < min_repeats or ctx.left() > max(times)):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def _timing(times: list[float]) -> dict:
    return {"step_s_median": _float(statistics.median(times)), "step_s_min": _float(min(times)),
            "timed_calls": len(times)}


def _compile(jitted, *args):
    """(compiled program, seconds to trace, lower and compile it, counted FLOPs, while loops)."""
    start = time.perf_counter()
    traced = jitted.trace(*args)
    compiled = traced.lower().compile()
    seconds = time.perf_counter() - start
    flops, whiles = jaxpr_flops(traced.jaxpr.jaxpr)
    return compiled, seconds, flops, whiles


# ------------------------------------------------------------------------------ part 1: numerics

# (kernel, stride, padding, Cin, Cout, side): the cases of tests/models/test_conv.py.
CONV_TEST_CASES = [(3, 1, 1, 3, 4, 8), (3, 1, 2, 3, 5, 8), (1, 2, 0, 4, 6, 8), (3, 2, 1, 2, 3, 9),
                   (5, 1, 2, 2, 3, 7), (2, 2, 0, 3, 2, 8), (3, 1, 1, 2, 3, 7)]
IMPLS = ("lax", "im2col", "winograd")


def part_numerics(ctx: Context, res: dict) -> None:
    from ddjax.mkdt.mtt import make_meta_loss, masked_mse
    from ddjax.models import TorchLayout, build_model, conv2d, from_torch_state_dict

    ref = _load("tests/models/reference_numpy.py", "ddjax_device_check_reference_numpy")
    s = ctx.sizes
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    res["reference"] = ("float64: numpy (tests/models/reference_numpy.py) for forward passes, "
                        "JAX float64 on the host CPU (im2col convolutions) for gradients")
    res["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    res["metrics"] = ("max_abs; max_abs_over_max_ref = max_abs / max |reference|; rel_l2 = "
                      "||got - reference|| / ||reference|| over all elements of all leaves")
    rng = np.random.default_rng(0)
    timings = res["section_seconds"] = {}
    clock = [time.perf_counter()]

    def lap(name):
        timings[name] = round(time.perf_counter() - clock[0], 1)
        clock[0] = time.perf_counter()
        ctx.flush()

    # (a) float64 on the device: the cases of tests/models/test_conv.py, values and second order.
    cases = CONV_TEST_CASES[:s.conv_test_cases]
    with _section(res, "float64_on_device"), _x64():
        worst_value, worst_second = 0.0, 0.0
        for k, stride, padding, cin, cout, side in cases:
            x = rng.normal(size=(2, side, side, cin))
            kernel = rng.normal(size=(k, k, cin, cout))
            want = ref.conv(x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1), stride=stride,
                            padding=padding).transpose(0, 2, 3, 1)
            xd, kd = jax.device_put(x, device), jax.device_put(kernel, device)
            grads = {}
            for impl in IMPLS:
                def value_and_second_order(x, w, impl=impl):  # as the two tests, one program
                    inner = lambda x, w: jnp.sum(jnp.tanh(conv2d(x, w, stride, padding, impl)) ** 2)
                    meta = lambda x, w: jnp.sum(jax.grad(inner, argnums=1)(x, w) ** 2)
                    return conv2d(x, w, stride, padding, impl), jax.grad(meta, argnums=(0, 1))(x, w)

                got, grads[impl] = jax.jit(value_and_second_order)(xd, kd)
                assert got.dtype == jnp.float64, got.dtype
                worst_value = max(worst_value, float(np.max(np.abs(np.asarray(got) - want))))
            for impl in ("im2col", "winograd"):
                worst_second = max(worst_second, _errors(grads[impl], grads["lax"])["max_abs"])
        res["float64_on_device"] = {
            "cases": len(cases), "impls": list(IMPLS),
            "conv_value_max_abs_vs_numpy": _float(worst_value),
            "second_order_grad_max_abs_vs_lax": _float(worst_second),
            "test_tolerance": 1e-9}
    lap("float64_on_device")

    # (b) float32 on the device vs float64: convolutions, the ConvNet, its gradients.
    def convnet(conv_impl):
        return build_model("convnet", num_outputs=s.net_outputs, width=s.net_width,
                           depth=s.depth, image_size=(s.net_side, s.net_side), conv_impl=conv_impl)

    model = convnet("auto")  # what the students use: lax.conv off CPU
    # The float64 reference runs on the host CPU, where lax.conv's second-order gradients are slow.
    ref_model = convnet("im2col")
    layout = TorchLayout.from_model(model, (s.net_side, s.net_side))
    sd = ref.random_state_dict([(e.torch_name, e.torch_shape) for e in layout.entries], seed=1)
    params32 = from_torch_state_dict(sd, layout)["params"]
    x_net = rng.normal(size=(s.net_batch, s.net_side, s.net_side, 3)).astype(np.float32)
    y_net = rng.normal(size=(s.net_batch, s.net_outputs)).astype(np.float32)
    want_forward = ref.convnet({k: np.asarray(v, np.float64) for k, v in sd.items()},
                               x_net.astype(np.float64).transpose(0, 3, 1, 2), depth=s.depth)
    mask = np.ones(s.net_batch, np.float32)
    steps = 2
    idx = np.stack([rng.permutation(s.net_batch) for _ in range(steps)]).astype(np.int32)
    masks = np.ones((steps, s.net_batch), np.float32)
    target_params = jax.tree.map(lambda p: np.asarray(p) * np.float32(0.9), params32)
    syn = {"images": x_net, "targets": y_net, "lr": np.float32(0.01)}
    # name -> (function of a model, its arguments)
    checks = {
        "inner_grad": (lambda m: jax.grad(masked_mse(m.apply)), (params32, x_net, y_net, mask)),
        "meta_grad": (lambda m: jax.grad(make_meta_loss(masked_mse(m.apply), remat=True)),
                      (syn, params32, target_params, idx, masks)),
    }
    conv_inputs = []
    for n, side, cin, cout in s.conv_cases:
        x = rng.normal(size=(n, side, side, cin)).astype(np.float32)
        w = (rng.normal(size=(3, 3, cin, cout)) / math.sqrt(9 * cin)).astype(np.float32)
        conv_inputs.append((f"conv_{side}x{side}x{cin}->{cout}_b{n}", x, w))
    want_conv = {name: ref.conv(x.astype(np.float64).transpose(0, 3, 1, 2),
                                w.astype(np.float64).transpose(3, 2, 0, 1), padding=1)
                 .transpose(0, 2, 3, 1) for name, x, w in conv_inputs}

    def upcast(tree):  # floating leaves to float64 on the host CPU; indices stay integers
        def leaf(a):
            a = np.asarray(a)
            return jax.device_put(a.astype(np.float64) if a.dtype.kind == "f" else a, cpu)
        return jax.tree.map(leaf, tree)

    with _x64():  # the float64 references of the gradients, on the host CPU
        want = {name: jax.tree.map(np.asarray, jax.jit(fn(ref_model))(*upcast(args)))
                for name, (fn, args) in checks.items()}
    lap("float64_references")

    # (where, precision): the device at both settings and, off CPU, the host CPU in float32 as
    # the baseline of plain float32 rounding (the student with im2col convolutions there).
    runs = [("device", "default"), ("device", "highest")]
    if device.platform == "cpu":  # XLA:CPU multiplies float32 in float32 at every setting
        runs = [("device", "default")]
        res["float32_highest_precision"] = {"skipped": "CPU: the same arithmetic as the default"}
    else:
        runs.append(("host_cpu", "default"))
    for where, precision in runs:
        key = f"float32_{precision}_precision" if where == "device" else "float32_host_cpu"
        target, net = (device, model) if where == "device" else (cpu, ref_model)
        put = lambda tree: jax.tree.map(lambda a: jax.device_put(np.asarray(a), target), tree)
        manager = (contextlib.nullcontext() if precision == "default"
                   else jax.default_matmul_precision(precision))
        entry = res[key] = {}
        with _section(res, key), manager:
            for name, x, w in conv_inputs:
                for impl in IMPLS:
                    got = jax.jit(conv2d, static_argnums=(2, 3, 4))(*put((x, w)), 1, 1, impl)
                    entry[f"{name}_{impl}"] = _errors(got, want_conv[name])
            got = jax.jit(net.apply)({"params": put(params32)}, put(x_net))
            entry["convnet_forward"] = _errors(got, want_forward)
            for name, (fn, args) in checks.items():
                entry[f"convnet_{name}"] = _errors(jax.jit(fn(net))(*put(args)), want[name])
        lap(key)
    res["worst_rel_l2"] = {
        key.removeprefix("float32_").removesuffix("_precision"): max(
            (v["rel_l2"] for v in res[key].values() if isinstance(v, dict) and "rel_l2" in v),
            default=None)
        for key in res if key.startswith("float32_") and "skipped" not in res[key]}
    res["note"] = ("float32 gradients of the first layer's parameters can differ from float64 by "
                   "a few whole terms where an activation lies within rounding of a ReLU kink; "
                   "float32_host_cpu shows that baseline of plain float32 arithmetic")
    res["convnet"] = {"width": s.net_width, "depth": s.depth, "side": s.net_side,
                      "batch": s.net_batch, "outputs": s.net_outputs, "norm": model.norm,
                      "meta_grad_inner_steps": steps}


# ---------------------------------------------------------------------------- part 2: mkdt_outer


def part_mkdt(ctx: Context, res: dict) -> None:
    from ddjax.mkdt.mtt import outer_optimizer
    from ddjax.models import build_model
    from ddjax.models.registry import dummy_input

    bench = _load("experiments/bench_distill.py", "ddjax_device_check_bench_distill")
    s = ctx.sizes
    # MKDT's student (ddjax/mkdt/student.py:student_model with the default model section).
    model = build_model("convnet", num_outputs=s.dim, width=s.width, depth=s.depth,
                        image_size=(32, 32), conv_impl="auto", init="torch")
    init = lambda k: model.init(k, dummy_input((32, 32)))["params"]
    # One expert's start and target parameters, with the leading expert axis of a meta-batch
    # (one compiled program: on a busy CPU every extra small program costs ~0.5 s to compile).
    start, target = jax.jit(lambda: jax.tree.map(
        lambda x: x[None], (init(jax.random.key(0)), init(jax.random.key(1)))))()
    images, targets = bench.data(s.num_syn, s.dim)
    idx, mask = bench.schedule(s.num_syn, s.batch_syn, s.syn_steps)
    res["config"] = {"syn_steps": s.syn_steps, "num_syn": s.num_syn, "image": [32, 32, 3],
                     "batch_syn": s.batch_syn, "width": s.width, "depth": model.depth,
                     "norm": model.norm, "dim": s.dim, "experts_per_step": 1, "remat": True,
                     "conv_impl": "auto (lax off CPU)", "lr_images": 1000.0}
    arguments = (start, target, jnp.asarray(idx[None]), jnp.asarray(mask[None]),
                 jax.random.split(jax.random.key(0), 1))
    optimizer = outer_optimizer(1000.0, 1.0, 1e-4)
    optimizer_init = jax.jit(optimizer.init)
    for dtype_name in ("float32", "bfloat16"):
        done = res.get("float32", {})
        if (dtype_name == "bfloat16" and "step_s_median" in done
                and ctx.left() < done["compile_s"] + 3 * done["step_s_median"]):
            res[dtype_name] = {"skipped": "time budget"}
            continue
        with _section(res, dtype_name):
            _mkdt_one(ctx, res, dtype_name, model, images, targets, arguments, optimizer,
                      optimizer_init)
    res["peak_device_gib"] = _gib(_peak_bytes())
    res["note"] = ("peak_device_gib is the allocator's peak since the process started "
                   "(memory_stats); xla_memory is the compiled step's own need")


def _mkdt_one(ctx, res, dtype_name, model, images, targets, arguments, optimizer, optimizer_init):
    """Compile and time the outer step with the inner loop in ``dtype_name``."""
    from ddjax.mkdt.mtt import make_meta_loss, make_outer_step, masked_mse

    s = ctx.sizes
    dtype = None if dtype_name == "float32" else jnp.bfloat16
    step = make_outer_step(make_meta_loss(masked_mse(model.apply), remat=True, inner_dtype=dtype),
                           optimizer)
    syn = {"images": jnp.asarray(images), "targets": jnp.asarray(targets),
           "lr": jnp.asarray(np.float32(0.1))}
    opt_state = optimizer_init(syn)
    compiled, compile_s, flops, whiles = _compile(step, syn, opt_state, *arguments)
    entry = res[dtype_name] = {
        "compile_s": _float(compile_s), "xla_memory": _xla_memory(compiled),
        "flops_counted": _float(flops), "flops_xla_cost_analysis": _float(_xla_flops(compiled)),
        "while_loops": whiles}
    ctx.flush()
    state = {"syn": syn, "opt": opt_state, "losses": []}

    def call():
        state["syn"], state["opt"], loss, _ = compiled(state["syn"], state["opt"], *arguments)
        state["losses"].append(loss)
        return state["syn"]

    first = _time_calls(call, ctx, 1)  # the first call allocates; not counted
    times = _time_calls(call, ctx, s.repeats, min_repeats=2)
    median = statistics.median(times)
    entry.update(_timing(times), first_call_s=_float(first[0]),
                 per_inner_step_ms=_float(1e3 * median / s.syn_steps),
                 achieved_tflops=_float(flops / median / 1e12),
                 losses=[_float(x) for x in state["losses"]],
                 peak_device_gib_so_far=_gib(_peak_bytes()))
    ctx.flush()


# ------------------------------------------------------------------------------- part 3: experts


def part_experts(ctx: Context, res: dict) -> None:
    from ddjax.mkdt.experts import make_student_epoch, mse_loss_fn, torch_sgd
    from ddjax.models import build_model
    from ddjax.models.registry import dummy_input

    s = ctx.sizes
    steps_per_epoch = math.ceil(CIFAR_TRAIN / s.expert_batch)
    model = build_model("convnet", num_outputs=s.dim, width=s.width, depth=s.depth,
                        image_size=(32, 32), conv_impl="auto", init="torch")
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.standard_normal((s.expert_images, 32, 32, 3), np.float32))
    targets = jnp.asarray(rng.standard_normal((s.expert_images, s.dim), np.float32))
    optimizer = torch_sgd(0.1, 0.9, 1e-4)
    epoch_fn = make_student_epoch(mse_loss_fn(model.apply), optimizer, s.expert_batch)
    timed_images = s.expert_steps * s.expert_batch
    res["config"] = {
        "width": s.width, "dim": s.dim, "batch": s.expert_batch, "dataset_images": s.expert_images,
        "steps_per_timed_call": s.expert_steps, "cifar10_steps_per_epoch": steps_per_epoch,
        "rate": (f"each timed call runs {s.expert_steps} SGD steps of every expert over the first "
                 f"{timed_images} images of its own permutation of the {s.expert_images} images; "
                 f"expert-epochs per hour = E * 3600 / ({steps_per_epoch} steps * seconds per "
                 "step)")}
    results = res["by_experts"] = {}
    # One initialisation repeated for every expert and numpy data orders: the values do not change
    # the cost, and each extra compiled program (the random streams) costs seconds on a CPU.
    params1 = jax.device_get(
        jax.jit(model.init)(jax.random.key(0), dummy_input((32, 32)))["params"])
    opt_init = jax.jit(jax.vmap(optimizer.init))
    for num_experts in s.experts:
        with _section(res, str(num_experts), holder=results):
            _experts_one(ctx, results, num_experts, epoch_fn, params1, opt_init, images, targets,
                         rng, steps_per_epoch)
        base = results.get(str(s.experts[0]), {}).get("expert_epochs_per_hour")
        rate = results.get(str(num_experts), {}).get("expert_epochs_per_hour")
        if base and rate:
            results[str(num_experts)]["speedup_vs_first"] = _float(rate / base)
        ctx.flush()


def _experts_one(ctx, results, num_experts, epoch_fn, params1, opt_init, images, targets, rng,
                 steps_per_epoch):
    """Compile and time ``expert_steps`` steps of ``num_experts`` vmapped experts."""
    s = ctx.sizes
    timed_images = s.expert_steps * s.expert_batch
    params = jax.tree.map(lambda a: jnp.asarray(np.repeat(a[None], num_experts, 0)), params1)
    opt = opt_init(params)
    perms = jnp.asarray(np.stack([rng.permutation(s.expert_images)[:timed_images]
                                  for _ in range(num_experts)]).astype(np.int32))
    aug_keys = jax.random.split(jax.random.key(0), num_experts)  # unused without augment
    compiled, compile_s, flops, _ = _compile(epoch_fn, params, {}, opt, images, targets, perms,
                                             aug_keys)
    entry = results[str(num_experts)] = {"compile_s": _float(compile_s),
                                         "xla_memory": _xla_memory(compiled)}
    ctx.flush()
    state = {"params": params, "opt": opt, "loss": None}
    del params, opt  # donated to the first call

    def call():
        state["params"], _, state["opt"], state["loss"] = compiled(
            state["params"], {}, state["opt"], images, targets, perms, aug_keys)
        return state["loss"]

    first = _time_calls(call, ctx, 1)
    times = _time_calls(call, ctx, 3, min_repeats=1)
    median = statistics.median(times)
    per_step = median / s.expert_steps
    entry.update(first_call_s=_float(first[0]), **_timing(times),
                 seconds_per_step_all_experts=_float(per_step),
                 expert_epochs_per_hour=_float(num_experts * 3600.0 / (steps_per_epoch * per_step)),
                 achieved_tflops=_float(flops / median / 1e12),
                 mean_loss_last_call=_float(np.mean(np.asarray(state["loss"]))),
                 peak_device_gib_so_far=_gib(_peak_bytes()))


# ------------------------------------------------------------------------------- part 4: lgm_vit


def part_lgm(ctx: Context, res: dict) -> None:
    from ddjax.backbones.vit import ViT, param_shapes
    from ddjax.backbones.vit_configs import IMAGENET_MEAN, IMAGENET_STD, get_variant
    from ddjax.lgm import pyramid
    from ddjax.lgm.step import LgmProblem, lgm_optimizer, make_train_step

    s = ctx.sizes
    variant = get_variant("dinov2_vitb14")
    cfg = variant.config
    if s.vit_tiny:
        cfg = dataclasses.replace(cfg, width=32, depth=1, heads=2, mlp_hidden=64, patch=8,
                                  pos_grid=4)
    params = _random_tree(param_shapes(cfg), np.random.default_rng(0), 0.02)
    module = ViT(cfg, dtype=jnp.bfloat16, remat=True)  # as vit_backbone(name, dtype=bfloat16)

    def features(variables, x):
        return module.apply(variables, x)

    problem = LgmProblem(features=features, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         feature_dim=cfg.feature_dim, num_classes=s.classes, crop_res=s.crop_res,
                         syn_res=s.syn_res, augs=s.augs, num_probes=1, chunk_size=0)
    lr = 2e-3
    step = make_train_step(problem, lr)

    # The final, deepest pyramid: every level active, N(0, 1/level^2) values as after
    # pyramid.extend_levels (values do not change the cost; numpy draws them without compiling).
    rng = np.random.default_rng(0)
    levels = [jnp.asarray(rng.standard_normal((s.ipc * s.classes, r, r, 3), np.float32) / (i + 1))
              for i, r in enumerate(pyramid.level_resolutions(s.syn_res))]
    opt_state = jax.jit(lgm_optimizer(lr).init)(levels)
    mask = jnp.asarray(pyramid.active_mask(len(levels), len(levels)))
    batch = s.ipc * s.augs * s.classes
    x_real = jnp.asarray(rng.integers(0, 256, (batch, s.syn_res, s.syn_res, 3), dtype=np.uint8))
    y_real = jnp.asarray(rng.integers(0, s.classes, batch).astype(np.int32))
    syn_labels = jnp.asarray(np.repeat(np.arange(s.classes, dtype=np.int32), s.ipc))
    variables = {"params": params}
    tiny_note = " (tiny: 1 block, width 32, patch 8)" if s.vit_tiny else ""
    res["config"] = {
        "backbone": "dinov2_vitb14 architecture, random weights" + tiny_note,
        "width": cfg.width, "depth": cfg.depth, "patch": cfg.patch,
        "tokens": (s.crop_res // cfg.patch) ** 2 + 1,
        "dtype": "bfloat16 compute, float32 parameters", "remat": True, "classes": s.classes,
        "ipc": s.ipc, "augs": s.augs, "num_probes": 1, "chunk_size": 0, "crop_res": s.crop_res,
        "syn_res": s.syn_res, "pyramid_levels": len(levels), "real_batch": batch,
        "syn_batch": s.ipc * s.classes * s.augs,
        "work": ("the reference's step: ImageNet-100, ipc 1, A = 10 -> 1,000 augmented real "
                 "views (forward) and 1,000 augmented synthetic views (forward + backward to the "
                 "images)")}
    args = (levels, opt_state, mask, variables, x_real, y_real, syn_labels, jax.random.key(1))
    one_image = jax.ShapeDtypeStruct((1, s.crop_res, s.crop_res, 3), jnp.float32)
    forward_flops, _ = traced_flops(features, variables, one_image)
    compiled, compile_s, flops, whiles = _compile(step, *args)
    state = {"levels": levels, "opt": opt_state, "i": 2, "losses": []}

    def call():
        state["levels"], state["opt"], loss = compiled(
            state["levels"], state["opt"], mask, variables, x_real, y_real, syn_labels,
            jax.random.key(state["i"]))
        state["i"] += 1
        state["losses"].append(loss)
        return loss

    first = _time_calls(call, ctx, 1)
    times = _time_calls(call, ctx, 5, min_repeats=2)
    median = statistics.median(times)
    kind = jax.devices()[0].device_kind
    res.update({
        "compile_s": _float(compile_s), "first_call_s": _float(first[0]), **_timing(times),
        "flops_counted": _float(flops), "while_loops": whiles,
        "flops_xla_cost_analysis": _float(_xla_flops(compiled)),
        "forward_flops_per_image": _float(forward_flops),
        "achieved_tflops": _float(flops / median / 1e12),
        "assumed_peak_bf16_tflops": ASSUMED_PEAK_BF16_TFLOPS,
        "fraction_of_peak": _float(flops / median / (ASSUMED_PEAK_BF16_TFLOPS * 1e12)),
        "device_kind": kind,
        "losses": [_float(x) for x in state["losses"]],
        "peak_device_gib_so_far": _gib(_peak_bytes()), "xla_memory": _xla_memory(compiled),
        "flops_note": ("flops_counted: matrix products and convolutions of the traced step, scan "
                       "bodies times their length, rematerialised forward passes included; XLA's "
                       "cost analysis counts each loop body (the scanned ViT blocks) once"),
    })


PARTS = {"numerics": part_numerics, "mkdt_outer": part_mkdt, "experts": part_experts,
         "lgm_vit": part_lgm}


# ---------------------------------------------------------------------------------------- driver


def _headline(name: str, res: dict) -> dict:
    """The few figures of a part that the progress line and the summary show."""
    try:
        if name == "numerics":
            float64 = res.get("float64_on_device", {})
            return {"worst_rel_l2": res.get("worst_rel_l2"),
                    "float64_max_abs": float64.get("conv_value_max_abs_vs_numpy")}
        if name == "mkdt_outer":
            return {k: {f: res[k].get(f) for f in ("step_s_median", "compile_s")}
                    for k in ("float32", "bfloat16") if k in res and "step_s_median" in res[k]} | {
                "peak_device_gib": res.get("peak_device_gib")}
        if name == "experts":
            return {f"E{e}": r.get("expert_epochs_per_hour")
                    for e, r in res.get("by_experts", {}).items()}
        if name == "lgm_vit":
            return {f: res.get(f) for f in ("step_s_median", "compile_s", "fraction_of_peak")}
    except Exception:  # noqa: BLE001 - a summary must never fail the run
        pass
    return {}


def _meta(sizes: Sizes, tiny: bool, argv) -> dict:
    device = jax.devices()[0]
    import flax
    import optax

    return {"device_kind": device.device_kind, "platform": device.platform,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
            "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "tiny": tiny, "argv": list(argv), "sizes": dataclasses.asdict(sizes),
            "assumed_peak_bf16_tflops": ASSUMED_PEAK_BF16_TFLOPS,
            "environment": {k: os.environ.get(k) for k in ENV_VARS if k in os.environ},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _version(package: str):
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001
        return None


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU smoke run)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all parts (default 420; tiny 600, i.e. every optional "
                        "measurement); compiles are never cut short")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; known: {list(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = TINY if args.tiny else FULL
    budget = args.budget if args.budget is not None else (600.0 if args.tiny else 420.0)
    ctx = Context(out, sizes, args.tiny, budget, parts)
    ctx.record["meta"] = _meta(sizes, args.tiny, argv)
    ctx.record["meta"]["budget_s"] = budget
    ctx.flush()
    summary = {"out": str(out / OUT_NAME), "device_kind": ctx.record["meta"]["device_kind"]}
    for number, name in enumerate(parts, 1):
        ctx.part = name
        res = ctx.record["parts"][name] = {"status": "running"}
        ctx.flush()
        begin = time.perf_counter()
        try:
            PARTS[name](ctx, res)
            res["status"] = "partial" if res.get("section_errors") else "ok"
        except Exception as error:  # noqa: BLE001 - record it and go on with the next part
            res["status"] = "error"
            res["error"] = f"{type(error).__name__}: {error}"[:2000]
            res["traceback"] = traceback.format_exc()[-4000:]
        res["seconds"] = round(time.perf_counter() - begin, 1)
        ctx.flush()
        shown = {"status": res["status"], **_headline(name, res)}
        if res["status"] == "error":
            shown["error"] = res["error"][:300]
        if res.get("section_errors"):
            shown["section_errors"] = res["section_errors"]
        summary[name] = shown
        print(f"[device_check] part {number}/{len(parts)} {name}: {res['status']} in "
              f"{res['seconds']} s {json.dumps(shown, default=str)}", file=sys.stderr, flush=True)
    # The GPU image has no tensorflow-datasets: nothing here may import it.
    ctx.record["meta"]["tensorflow_datasets_imported"] = "tensorflow_datasets" in sys.modules
    ctx.record["finished"] = True
    ctx.flush()
    summary["elapsed_s"] = ctx.record["elapsed_s"]
    print(json.dumps(summary, default=str), flush=True)
    return ctx.record


if __name__ == "__main__":
    main()
