"""Is the student's inner gradient descent stable along the unroll? Diagnostics for trajectory matching.

Trajectory matching differentiates through ``syn_steps`` SGD steps at the learnable lr η
(``mtt.unroll``; docs/mkdt.md#trajectory-matching). A step is stable along a direction of
curvature λ only while ``0 < η·λ < 2``; past that the unroll expands it every step, ‖dθ_n/dη‖ grows
geometrically and the exact meta-gradient is the divergence's, not the matching loss's slope:
users see the lr explode and NaN losses. ``top_hessian_eigenvalue`` (sharpness of one minibatch's
inner loss), ``lr_sensitivity`` (‖dθ_n/dη‖ per step, forward mode), ``growth_rate`` and
``diagnose`` (a one-line verdict) say so, on ``mtt.minibatch_loss`` and ``mtt.inner_step``, the
unroll's own loss and step. All but ``diagnose`` are pure and jittable (functions and
``iterations`` static).

Cost in inner steps (one gradient on one minibatch), measured on CPU with a width-16 ConvNet,
32-image minibatches, 10 steps: ``top_hessian_eigenvalue`` is ``iterations`` forward-over-reverse
HVPs of ~2.5 inner steps each (~50 at the default 20); ``lr_sensitivity`` over N steps is N JVPs
of ~3.5 inner steps each (~3.5 forward unrolls, no backward pass, memory constant in N). One outer
iteration (unroll + rematerialised reverse) is ~4.3 unrolls, so a full check (two probes and the
sensitivity) at ``syn_steps = 40`` costs ~6 unrolls, one or two outer iterations.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ddjax.mkdt import mtt


Params = Any
StepFn = Callable[[Params, jax.Array, Any], Params]

# A sustained per-step growth of ‖dθ_n/dη‖/n above this flags the unroll (see ``diagnose``).
MAX_GROWTH = 1.5


def top_hessian_eigenvalue(loss_of_params: Callable[[Params], jax.Array], params: Params,
                           key: jax.Array, iterations: int = 20) -> jax.Array:
    """λ_max, the largest (algebraic) eigenvalue of ∇²L at ``params`` (any pytree): the curvature
    that bounds a stable gradient step, ``η·λ_max < 2``.

    Power iteration ``v ← Hv / ‖Hv‖`` from a random unit vector drawn with ``key``, with the
    Hessian-vector product in forward-over-reverse mode (``jax.jvp(jax.grad(L), (θ,), (v,))``);
    the estimate is the Rayleigh quotient ``vᵀHv`` of the last unit vector. Power iteration finds
    the eigenvalue of largest *magnitude*; when that is negative (a saddle's escape direction,
    common at initialisation) a second power iteration on ``H − λ I`` (all eigenvalues shifted to
    ≥ 0) finds λ_max. The Rayleigh quotient's error falls as ``(λ₂/λ₁)^(2·iterations)`` of the
    matrix iterated. ``iterations`` HVPs, twice that when the dominant eigenvalue is negative.
    """
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda x: loss_of_params(unravel(x)))

    def hvp(v):
        return jax.jvp(grad, (flat,), (v,))[1]

    def normalise(v):
        norm = jnp.linalg.norm(v)
        return v / jnp.where(norm > 0, norm, 1.0)

    def power(shift):
        def body(_, carry):
            v, _ = carry
            hv = hvp(v) - shift * v
            return normalise(hv), jnp.vdot(v, hv)

        v0 = normalise(jax.random.normal(key, flat.shape, flat.dtype))
        return jax.lax.fori_loop(0, iterations, body, (v0, jnp.zeros((), flat.dtype)))[1] + shift

    dominant = power(jnp.zeros((), flat.dtype))
    return jax.lax.cond(dominant < 0, power, lambda d: d, dominant)


def _tree_norm(tree: Params) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def lr_sensitivity(step_fn: StepFn, params0: Params, lr: jax.Array, steps_inputs: Any, *,
                   return_params: bool = False):
    """‖dθ_n/dη‖ for n = 1..N of the unroll ``θ_n = step_fn(θ_{n-1}, η, inputs_n)``.

    ``steps_inputs`` is a pytree whose leaves have a leading axis of N (scanned over). The
    derivative is carried forward in a ``lax.scan``: each step is a ``jax.jvp`` of ``step_fn``
    with tangent dθ_{n-1}/dη on θ and 1 on η (θ_0 does not depend on η), so memory does not grow
    with N and no backward pass is taken. Returns the [N] norms, and θ_N too (``(norms, θ_N)``)
    with ``return_params`` (static), e.g. to probe the sharpness at the unroll's end.
    """
    lr = jnp.asarray(lr)
    tangent0 = jax.tree.map(jnp.zeros_like, params0)

    def body(carry, inputs):
        params, tangent = carry
        params, tangent = jax.jvp(lambda p, eta: step_fn(p, eta, inputs), (params, lr),
                                  (tangent, jnp.ones_like(lr)))
        return (params, tangent), _tree_norm(tangent)

    (params_N, _), norms = jax.lax.scan(body, (params0, tangent0), steps_inputs)
    return (norms, params_N) if return_params else norms


def growth_rate(norms: jax.Array) -> jax.Array:
    """Geometric-mean per-step growth of ``‖dθ_n/dη‖ / n`` over the second half of the unroll.

    Dividing by n removes the linear growth every unroll has (on a flat landscape, constant
    gradient g, dθ_n/dη = −n·g), so the rate estimates the step map's expansion: on a quadratic
    it tends to max |1 − η·λ_i| over the directions present, < 1 exactly when every step is
    contracting (0 < η·λ < 2), > 1 when one is expanding. The second half (steps ⌊N/2⌋..N)
    skips the first steps, where the derivative starts from 0. ``norms`` is
    ``lr_sensitivity``'s output ([N], N ≥ 2; N = 1 gives NaN); a zero or non-finite norm
    gives inf or NaN, which ``diagnose`` reports as unstable.
    """
    n_steps = norms.shape[0]
    if n_steps < 2:
        return jnp.full((), jnp.nan, norms.dtype)
    per_step = norms / jnp.arange(1, n_steps + 1, dtype=norms.dtype)
    first = n_steps // 2  # the ratio of θ_N's to θ_{N/2}'s, over N − N/2 steps
    return (per_step[-1] / per_step[first - 1]) ** (1.0 / (n_steps - first))


def unroll_stability(inner_loss, syn: dict, params0: Params, batch_idx_SB: jax.Array,
                     mask_SB: jax.Array, key: jax.Array, *, iterations: int = 20,
                     **options) -> dict[str, jax.Array]:
    """The diagnostics of one unroll of trajectory matching, as the distill stage runs it: the
    sharpness of the first minibatch's inner loss at ``params0`` and of the last one's at the end
    of the unroll, and the growth of ‖dθ_n/dη‖ along it (``options``: ``mtt.minibatch_loss``'s
    augment, aug_key and inner_dtype). Jittable with ``inner_loss``, ``iterations`` and the
    options' functions static."""
    images, targets = syn["images"], syn.get("targets")
    inputs = mtt.unroll_inputs(batch_idx_SB, mask_SB)
    step = mtt.inner_step(inner_loss, images, targets, **options)
    norms, params_N = lr_sensitivity(step, params0, syn["lr"], inputs, return_params=True)
    loss = mtt.minibatch_loss(inner_loss, images, targets, **options)
    first = jax.tree.map(lambda a: a[0], inputs)
    last = jax.tree.map(lambda a: a[-1], inputs)
    start_key, end_key = jax.random.split(key)
    return {"lambda_max_start": top_hessian_eigenvalue(lambda p: loss(p, first), params0,
                                                       start_key, iterations),
            "lambda_max_end": top_hessian_eigenvalue(lambda p: loss(p, last), params_N,
                                                     end_key, iterations),
            "lr_growth": growth_rate(norms)}


def diagnose(lr: float, lambda_start: float, lambda_end: float, growth: float,
             max_growth: float = MAX_GROWTH, targets_standardized: bool = False
             ) -> tuple[bool, str | None]:
    """``(ok, message)``: is the inner gradient descent of the unroll stable enough to trust the
    meta-gradient? ``message`` is None when ok, else ONE line with the numbers and the fix.

    Not ok when ``η·max(λ_start, λ_end) ≥ 2`` (the sharpness at the unroll's first and last
    minibatch, ``top_hessian_eigenvalue``): a gradient step at η expands the top curvature
    direction; or when ``growth ≥ max_growth`` (``growth_rate``): ‖dθ_n/dη‖ beyond the linear
    growth of a flat landscape is multiplied by ``growth`` every step. 1.5 corresponds on a
    quadratic to η·λ = 2.5, a quarter past the stability edge (between 1 and ~1.2 is the
    edge-of-stability regime, where training is known to oscillate yet progress); sustained over
    the second half of a 40-step unroll it amplifies the divergent direction by 1.5^20 ≈ 3·10³
    relative to the rest, so the meta-gradient is that direction's and not the matching loss's
    slope. The growth test catches a sharpness rise between the two probed minibatches. Also not
    ok when the lr is ≤ 0 (the student trains away from its loss) or any input is not finite.
    The fix offers target standardisation unless ``targets_standardized``. Host-side (floats
    in, a string out): call it on the jitted checks' results.
    """
    lr, lambda_start, lambda_end, growth = map(float, (lr, lambda_start, lambda_end, growth))
    sharpness = max(lambda_start, lambda_end)
    below = f"2/{sharpness:.3g} = {2 / sharpness:.3g}" if sharpness > 0 else "its value"
    fix = (f"lower distill.lr_init (below {below}) or use fewer distill.syn_steps" if targets_standardized
           else f"lower distill.lr_init (below {below}), use fewer distill.syn_steps, or standardise "
                "the targets (experts.standardize_targets=True, with new experts)")
    numbers = (f"lr {lr:.3g}, sharpness {lambda_start:.3g} -> {lambda_end:.3g} along the unroll "
               f"(lr*sharpness {lr * sharpness:.3g}), d(theta_n)/d(lr) growth {growth:.3g}x per step")
    if not all(map(math.isfinite, (lr, lambda_start, lambda_end, growth))):
        return False, f"inner unroll diverged (non-finite values: {numbers}); {fix}"
    if lr <= 0:
        return False, (f"the inner lr is {lr:.3g} <= 0: the student ascends its loss ({numbers}); "
                       "raise distill.lr_init or lower distill.lr_lr")
    reasons = []
    if lr * sharpness >= 2:
        reasons.append("lr*sharpness >= 2")
    if growth >= max_growth:
        reasons.append(f"growth >= {max_growth:g}")
    if not reasons:
        return True, None
    return False, (f"inner gradient descent is unstable ({' and '.join(reasons)}: {numbers}), so the "
                   f"exact meta-gradient is dominated by the divergence; {fix}")
