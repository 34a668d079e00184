"""MKDT's linear-probe evaluation: ``nn.Linear(D, C)`` on frozen features, fit by L-BFGS.

The reference calls ``torch.optim.LBFGS(lr=1, max_iter=20, history_size=100,
line_search_fn=None).step`` 20 times on the full set of training features, minimising the mean
cross-entropy plus ``1e-3 * sum(W**2)``. ``fit_linear_probe`` reproduces that run step for step
(torch's first step, breaks and curvature-pair skipping on top of optax's L-BFGS) as one
jittable function that vmaps over seeds (``fit_probes``). See docs/mkdt.md#evaluation.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import optax

# Torch accepts a curvature pair only when y.s exceeds this (hard-coded in torch.optim.LBFGS).
CURVATURE_EPS = 1e-10

_HIGHEST = jax.lax.Precision.HIGHEST


def torch_linear_init(key: jax.Array, dim: int, num_classes: int, dtype=jnp.float32):
    """``nn.Linear(dim, num_classes)``'s default init: W [C, D], b [C] ~ U(-1/sqrt(D), 1/sqrt(D)).

    (kaiming_uniform with a=sqrt(5) on W gives the same bound as the bias.) W and b come from two
    independent subkeys of ``key``.
    """
    bound = 1.0 / float(dim) ** 0.5
    key_w, key_b = jax.random.split(key)
    w = jax.random.uniform(key_w, (num_classes, dim), dtype, -bound, bound)
    b = jax.random.uniform(key_b, (num_classes,), dtype, -bound, bound)
    return w, b


def probe_objective(w, b, features, labels, l2: float = 1e-3):
    """The reference closure's loss: mean cross-entropy of ``features @ W.T + b`` against integer
    ``labels`` over all n rows, plus ``l2 * sum(W**2)`` (the bias is not penalised)."""
    logits = jnp.dot(features, w.T, precision=_HIGHEST) + b
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.mean(nll) + l2 * jnp.sum(w * w)


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def fit_linear_probe(features, labels, key, *, num_classes: int, steps: int = 20,
                     max_iter: int = 20, max_eval: int | None = None, history: int = 100,
                     lr: float = 1.0, l2: float = 1e-3, tolerance_grad: float = 1e-7,
                     tolerance_change: float = 1e-9):
    """Fit one probe as the reference does: ``steps`` calls of torch's LBFGS ``.step``.

    ``features`` [n, D] (its dtype is the working dtype), ``labels`` [n] ints in [0, num_classes),
    ``key`` draws the init (``torch_linear_init``). Keyword arguments mirror
    ``torch.optim.LBFGS``'s (``max_eval=None`` means torch's ``max_iter * 5 // 4``) and must be
    static under ``jit``. Pure and jit/vmap-friendly. Returns ``(W [C, D], b [C], loss)`` with
    ``loss`` the objective at the returned parameters.

    * Init: ``nn.Linear``'s default, W [C, D] and b [C] both ~ U(-1/sqrt(D), 1/sqrt(D)), drawn from a
      JAX key (``torch_linear_init``).
    * Parameters are optimised as one flat vector ``concat(W.ravel(), b)``, the order in which torch's
      ``_gather_flat_grad`` lays them out, so every dot product, max and sum sees the same vector.
    * Per ``.step`` (an outer ``lax.scan``): stop at once if ``max|g| <= tolerance_grad``; otherwise up
      to ``max_iter`` iterations (an inner ``lax.while_loop``) of: direction, step length
      ``t = lr`` (``min(1, 1/sum|g|) * lr`` on the very first iteration of the whole run), break before
      moving if ``g.d > -tolerance_change``, ``params += t * d``, re-evaluate, then break on
      ``n_iter == max_iter``, ``1 + n_iter >= max_eval`` (torch's evaluation budget: with the default
      ``max_eval = max_iter * 5 // 4`` it only binds for ``max_iter <= 3``), ``max|g| <=
      tolerance_grad``, ``max|t*d| <= tolerance_change`` or ``|loss - prev_loss| < tolerance_change``.
      The direction d, step t, previous gradient, previous loss, the curvature history and the global
      iteration count persist across steps, as in torch's optimizer state.
    * Torch skips re-evaluating the closure on the last iteration of a ``.step`` and evaluates it
      afresh at the start of the next one, at unchanged parameters. Here the loss and gradient are
      always evaluated right after a move and carried into the next step instead: same point, same
      values. Under ``vmap`` the inner loop runs until every seed has broken out; seeds that are done
      are held fixed (a batched ``while_loop`` selects their carry).

    The direction comes from ``optax.scale_by_lbfgs(memory_size=history, scale_init_precond=True)``:
    its two-loop recursion over a circular buffer of (s, y) pairs, with the identity scaled by
    gamma = y.s / y.y of the newest pair, is torch's recursion with ``H_diag``. Two differences are
    bridged explicitly, without a hand-written recursion:

    * First step. optax scales the very first direction by ``min(1, 1/||g||_2)``; torch uses d = -g
      and puts ``min(1, 1/||g||_1)`` into t. The first global iteration therefore bypasses optax
      (d = -g, torch's t), and the optax state starts at ``count = 1`` with an empty memory, so optax
      never takes its own first-step branch. Invariant: ``count == 1 + accepted pairs``.
    * Curvature-pair skip. Torch stores (s = t_prev * d_prev, y = g - g_prev) only when
      ``y.s > 1e-10`` (and only then updates ``H_diag``); optax stores every pair. Rejection is not
      impossible here: the objective is strictly convex along every direction the iterates can take
      (cross-entropy is flat only along b + c*1, which gradients never point to), but the threshold is
      absolute, so near the optimum, once ``|s|^2`` times the curvature drops under 1e-10, torch does
      reject pairs, which the tests observe on small problems within the reference's 400 iterations.
      Faithful handling: an accepted pair is fed to optax as is (``params`` = s against a zero
      anchor, so optax's ``params - state.params`` is torch's s bit for bit, and ``state.updates`` =
      g_prev so its y is torch's); a rejected pair leaves the optax state frozen (selected back),
      and the direction is taken from a call that re-feeds the newest accepted pair into its own slot
      with ``count - 1``, which reproduces the old memory, its order and the old gamma (the re-fed y is
      g - (g - y_last), equal to y_last up to one rounding, so that direction matches torch to rounding,
      not bit for bit). With no accepted pair yet torch's direction is -g (``H_diag = 1``), used as is.

    Numerics: all dot products are traced under ``jax.default_matmul_precision("highest")`` so that
    GPUs do not fall back to TF32 (torch's default for float32 matmuls is full precision). Results
    match torch to rounding only (XLA and ATen order their reductions differently): in float64 the
    tests agree to ~1e-14; in float32 rounding differences grow over the run (a 2000 x 64 x 10 problem
    ends ~1e-5 apart), and near convergence the discrete breaks (``|loss - prev_loss| < 1e-9`` is
    ``loss == prev_loss`` there, ``y.s > 1e-10``) can fall either way in either implementation.
    """
    init, lbfgs_step, finish = _lbfgs(features, labels, num_classes=num_classes, max_iter=max_iter,
                                      max_eval=max_eval, history=history, lr=lr, l2=l2,
                                      tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change)

    def one_step(c, step):
        c = lbfgs_step(c)
        jax.debug.callback(_step_done, step)  # progress bars (``on_probe_step``); no values read
        return c, None

    with jax.default_matmul_precision("highest"):
        final, _ = jax.lax.scan(one_step, init(key), jnp.arange(steps))
    return finish(final)


# Called on the host after each L-BFGS ``.step`` of a running fit with the step's index (XLA may
# call it more than once per step, e.g. for a duplicated loop body): what ``on_probe_step``
# registered.
_STEP_LISTENERS: list[Callable[[int], None]] = []


def _step_done(step) -> None:
    for listener in list(_STEP_LISTENERS):
        listener(int(step))


@contextlib.contextmanager
def on_probe_step(listener: Callable[[int], None]) -> Iterator[None]:
    """Call ``listener(i)`` when L-BFGS ``.step`` ``i`` (0-based) of a fit that runs inside the
    block has finished, possibly more than once per ``i``: a progress bar sets its position to
    the highest ``i + 1`` seen. Wait for the fit's results inside the block. The callback reads
    no array, so the fit computes exactly what it computes without one."""
    _STEP_LISTENERS.append(listener)
    try:
        yield
    finally:
        _STEP_LISTENERS.remove(listener)


def _lbfgs(features, labels, *, num_classes: int, max_iter: int = 20,
           max_eval: int | None = None, history: int = 100, lr: float = 1.0, l2: float = 1e-3,
           tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9):
    """``(init(key) -> carry, lbfgs_step(carry) -> carry, finish(carry) -> (W, b, loss))``: the
    pieces of ``fit_linear_probe`` (one ``lbfgs_step`` is one torch ``.step``). Trace them under
    ``jax.default_matmul_precision("highest")``."""
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    dim = features.shape[-1]
    dtype = features.dtype
    n_w = num_classes * dim

    def unflatten(theta):
        return theta[:n_w].reshape(num_classes, dim), theta[n_w:]

    def objective(theta):
        w, b = unflatten(theta)
        return probe_objective(w, b, features, labels, l2)

    value_and_grad = jax.value_and_grad(objective)
    tx = optax.scale_by_lbfgs(memory_size=history, scale_init_precond=True)

    def init(key):
        w0, b0 = torch_linear_init(key, dim, num_classes, dtype)
        theta0 = jnp.concatenate([w0.ravel(), b0])
        loss0, g0 = value_and_grad(theta0)
        zeros = jnp.zeros_like(theta0)
        # count = 1: "past the first step", empty memory (see fit_linear_probe's docstring).
        opt0 = tx.init(theta0)._replace(count=jnp.asarray(1, jnp.int32))
        return dict(theta=theta0, loss=loss0, g=g0, d=zeros, t=jnp.zeros((), dtype),
                    g_prev=zeros, prev_loss=jnp.zeros((), dtype), opt=opt0,
                    n_total=jnp.zeros((), jnp.int32))

    def iteration(inner):
        c, n_iter, _ = inner
        n_iter = n_iter + 1
        n_total = c["n_total"] + 1
        first = n_total == 1
        g = c["g"]
        zeros = jnp.zeros_like(g)

        # Curvature pair from the previous iteration (possibly of the previous .step).
        y = g - c["g_prev"]
        s = c["d"] * c["t"]
        accept = jnp.logical_and(~first, jnp.vdot(y, s) > CURVATURE_EPS)
        opt = c["opt"]
        have_pairs = opt.count > 1
        last = (opt.count - 2) % history  # slot of the newest accepted pair
        s_last = opt.diff_params_memory[last]
        y_last = opt.diff_updates_memory[last]
        opt_in = opt._replace(
            count=jnp.where(accept, opt.count, opt.count - 1),
            params=zeros,
            updates=jnp.where(accept, c["g_prev"], g - y_last),
        )
        hg, opt_out = tx.update(g, opt_in, jnp.where(accept, s, s_last))
        opt = _tree_where(accept, opt_out, opt)
        use_hg = jnp.logical_and(~first, jnp.logical_or(accept, have_pairs))
        d = jnp.where(use_hg, -hg, -g)

        g_prev, prev_loss = g, c["loss"]
        t = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * lr,
                      jnp.asarray(lr, dtype)).astype(dtype)
        descent = jnp.vdot(g, d) <= -tolerance_change  # else torch breaks before moving

        theta = jnp.where(descent, c["theta"] + t * d, c["theta"])
        loss_new, g_new = value_and_grad(theta)
        loss = jnp.where(descent, loss_new, c["loss"])
        g = jnp.where(descent, g_new, g)

        stop = (~descent
                | (n_iter == max_iter)
                | (1 + n_iter >= max_eval)
                | (jnp.max(jnp.abs(g)) <= tolerance_grad)
                | (jnp.max(jnp.abs(d * t)) <= tolerance_change)
                | (jnp.abs(loss - prev_loss) < tolerance_change))
        c = dict(theta=theta, loss=loss, g=g, d=d, t=t, g_prev=g_prev, prev_loss=prev_loss,
                 opt=opt, n_total=n_total)
        return c, n_iter, stop

    def lbfgs_step(c):
        optimal = jnp.max(jnp.abs(c["g"])) <= tolerance_grad
        c, _, _ = jax.lax.while_loop(lambda inner: ~inner[2], iteration,
                                     (c, jnp.zeros((), jnp.int32), optimal))
        return c

    def finish(c):
        w, b = unflatten(c["theta"])
        return w, b, c["loss"]

    return init, lbfgs_step, finish


_STATIC = ("num_classes", "steps", "max_iter", "max_eval", "history", "lr", "l2",
           "tolerance_grad", "tolerance_change")


@functools.partial(jax.jit, static_argnames=_STATIC)
def fit_probes(features, labels, keys, **kw):
    """``fit_linear_probe`` for S seeds at once (jitted vmap).

    ``features`` [S, n, D] and ``labels`` [S, n], or [n, D] and [n] shared by all seeds; ``keys``
    [S]. Keyword arguments as ``fit_linear_probe``. Returns W [S, C, D], b [S, C], loss [S].
    """
    fit = functools.partial(fit_linear_probe, **kw)
    shared = features.ndim == 2
    axes = (None, None, 0) if shared else (0, 0, 0)
    return jax.vmap(fit, in_axes=axes)(features, labels, keys)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def probe_accuracy(w, b, features, labels, batch_size: int = 1024):
    """Top-1 accuracy of ``features @ W.T + b`` (argmax, first index on ties) against ``labels``.

    Single probe: W [C, D], b [C], features [n, D], labels [n] -> scalar. Batched over seeds:
    W [S, C, D], b [S, C] with features [S, n, D] / labels [S, n] or shared [n, D] / [n] -> [S].
    Rows go through in blocks of ``batch_size`` so that at most a [batch_size, C] logit block
    per seed is live, whatever n.
    """
    if w.ndim == 3:
        axes = (0, 0, 0 if features.ndim == 3 else None, 0 if labels.ndim == 2 else None)
        return jax.vmap(functools.partial(probe_accuracy, batch_size=batch_size),
                        in_axes=axes)(w, b, features, labels)

    def correct(row):
        x, y = row
        logits = jnp.dot(w, x, precision=_HIGHEST) + b
        return jnp.argmax(logits) == y

    hits = jax.lax.map(correct, (features, labels), batch_size=batch_size)
    return jnp.mean(hits.astype(jnp.float32))
