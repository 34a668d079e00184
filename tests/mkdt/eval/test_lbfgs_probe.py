"""MKDT's L-BFGS linear probe (ddjax.mkdt.lbfgs_probe) against torch.optim.LBFGS itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddjax.mkdt.lbfgs_probe import (fit_linear_probe, fit_probes, probe_accuracy,
                                    probe_objective, torch_linear_init)

L2 = 1e-3


def torch_lbfgs(x, y, w0, b0, *, steps, max_iter=20, history=100, line_search_fn=None,
                tolerance_grad=1e-7, tolerance_change=1e-9):
    """The reference: nn.Linear(D, C) set to (w0, b0), LBFGS(lr=1, ...).step(closure) `steps`
    times, in float64. Returns W, b and (global iterations, stored curvature pairs)."""
    lin = torch.nn.Linear(x.shape[1], w0.shape[0], dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.array(w0, np.float64)))
        lin.bias.copy_(torch.tensor(np.array(b0, np.float64)))
    xt, yt = torch.tensor(np.array(x, np.float64)), torch.tensor(np.array(y))
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, history_size=history,
                            line_search_fn=line_search_fn, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xt), yt) + L2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    state = opt.state[lin.weight]
    counts = (state.get("n_iter", 0), len(state.get("old_dirs") or []))
    return lin.weight.detach().numpy(), lin.bias.detach().numpy(), counts


def problem(seed, n=60, dim=8, classes=3, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)) * scale, rng.integers(0, classes, n)


def initial_gradient(x, y, w0, b0):
    g = jax.grad(lambda w, b: probe_objective(w, b, jnp.asarray(x), jnp.asarray(y), L2),
                 argnums=(0, 1))(w0, b0)
    return np.concatenate([np.ravel(g[0]), np.ravel(g[1])])


@pytest.mark.parametrize(
    "scale, steps, max_iter, history, tol_change, tol_grad",
    [
        (1.0, 1, 3, 100, 1e-9, 1e-7),    # max_eval = 3 binds: 2 iterations per .step
        (0.05, 2, 5, 100, 1e-9, 1e-7),   # small gradient (first t = lr); state across steps
        (1.0, 20, 20, 100, 1e-9, 1e-7),  # the reference's schedule, into convergence (pairs
                                         # rejected)
        (2.0, 20, 20, 5, 1e-9, 1e-7),    # ||g||_2 > 1 as well: both scale, differently;
                                         # the history wraps around
        (3.0, 2, 20, 100, 0.1, 1e-7),    # loose tolerance_change: the |t*d| and |loss change|
                                         # breaks end the calls
        (1.0, 2, 20, 100, 1e-9, 1e-3),   # loose tolerance_grad: the max|g| breaks
    ],
)
def test_matches_torch_lbfgs(scale, steps, max_iter, history, tol_change, tol_grad):
    with jax.enable_x64(True):
        x, y = problem(0, scale=scale)
        key = jax.random.key(3)
        w0, b0 = torch_linear_init(key, 8, 3, jnp.float64)
        fit = jax.jit(lambda x, y, k: fit_linear_probe(x, y, k, num_classes=3, steps=steps,
                                                       max_iter=max_iter, history=history,
                                                       tolerance_change=tol_change,
                                                       tolerance_grad=tol_grad))
        w, b, loss = fit(jnp.asarray(x), jnp.asarray(y), key)
        assert w.dtype == jnp.float64
        g0 = initial_gradient(x, y, w0, b0)
        w_ref, b_ref, (iters, pairs) = torch_lbfgs(x, y, w0, b0, steps=steps, max_iter=max_iter,
                                                   history=history, tolerance_change=tol_change,
                                                   tolerance_grad=tol_grad)
        loss_ref = probe_objective(jnp.asarray(w_ref), jnp.asarray(b_ref), jnp.asarray(x),
                                   jnp.asarray(y), L2)
        w, b, loss, w0, loss_ref = (np.asarray(a) for a in (w, b, loss, w0, loss_ref))
    # The cases exercise what they claim to.
    assert np.abs(w_ref - np.asarray(w0)).max() > 1e-2  # the fit moved
    if scale >= 1.0:
        assert np.abs(g0).sum() > 1.0  # torch scales step 1 by 1/sum|g|, optax by 1/||g||_2
        assert not np.isclose(min(1, 1 / np.abs(g0).sum()), min(1, 1 / np.linalg.norm(g0)))
    else:
        assert np.abs(g0).sum() < 1.0
    if (steps, max_iter) == (1, 3):
        assert iters == 2
    if tol_change > 1e-9 or tol_grad > 1e-7:
        assert iters < steps * max_iter / 2  # a break ended the calls early
    if (steps, history) == (20, 100):
        assert pairs < min(iters - 1, history)  # curvature pairs were rejected
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-11)
    np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-11)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)


@pytest.mark.parametrize(
    "kw, atol, loss_gap",
    [
        # The reference's settings stop once a step changes the loss by < 1e-9, which leaves W
        # about sqrt(1e-9 / curvature) from the optimum.
        (dict(), 1e-4, 1e-9),
        # Tight tolerances: the same iteration converges all the way.
        (dict(steps=40, tolerance_grad=1e-12, tolerance_change=1e-15), 1e-6, 1e-13),
    ],
)
def test_reaches_the_optimum(kw, atol, loss_gap):
    with jax.enable_x64(True):
        x, y = problem(1, n=80, dim=6, classes=4)
        key = jax.random.key(0)
        w, b, loss = fit_linear_probe(jnp.asarray(x), jnp.asarray(y), key, num_classes=4, **kw)
        # Independent optimum: torch L-BFGS with a strong-Wolfe line search, run to the end.
        w0, b0 = torch_linear_init(key, 6, 4, jnp.float64)
        w_opt, b_opt, _ = torch_lbfgs(x, y, w0, b0, steps=10, max_iter=500,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-13,
                                      tolerance_change=1e-16)
        loss_opt = float(probe_objective(jnp.asarray(w_opt), jnp.asarray(b_opt), jnp.asarray(x),
                                         jnp.asarray(y), L2))
        w, b, loss = np.asarray(w), np.asarray(b), float(loss)
    np.testing.assert_allclose(w, w_opt, rtol=0, atol=atol)
    # Cross-entropy ignores a common shift of the bias (both methods keep sum(b) from the init).
    np.testing.assert_allclose(b - np.mean(b), b_opt - np.mean(b_opt), rtol=0, atol=atol)
    assert 0 <= loss - loss_opt < loss_gap


def clusters(seed, n_per_class, classes=4, dim=16, spread=0.5):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(classes, dim)) * 3.0
    y = np.repeat(np.arange(classes), n_per_class)
    x = centers[y] + spread * rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm].astype(np.int32)


def test_separable_clusters_are_classified():
    x_train, y_train = clusters(0, 50)
    x_test, y_test = clusters(1, 250)
    w, b, loss = fit_linear_probe(jnp.asarray(x_train), jnp.asarray(y_train), jax.random.key(0),
                                  num_classes=4)
    assert w.dtype == jnp.float32 and np.isfinite(float(loss))
    acc = float(probe_accuracy(w, b, jnp.asarray(x_test), jnp.asarray(y_test), batch_size=128))
    expected = np.mean(np.argmax(x_test @ np.asarray(w).T + np.asarray(b), axis=1) == y_test)
    assert acc == pytest.approx(expected, abs=1e-6)
    assert acc >= 0.99


def test_vmap_over_seeds_equals_separate_fits():
    # float64: batching reorders float sums, which float32 L-BFGS amplifies to ~1e-4 over a run.
    seeds = 3
    data = [clusters(s, 20, spread=2.5) for s in range(seeds)]
    kw = dict(num_classes=4, steps=3, max_iter=10)
    with jax.enable_x64(True):
        xs = jnp.asarray(np.stack([d[0] for d in data]), jnp.float64)
        ys = jnp.asarray(np.stack([d[1] for d in data]))
        keys = jax.random.split(jax.random.key(7), seeds)
        w_s, b_s, loss_s = fit_probes(xs, ys, keys, **kw)
        single = jax.jit(lambda x, y, k: fit_linear_probe(x, y, k, **kw))
        separate = [single(xs[s], ys[s], keys[s]) for s in range(seeds)]
        # Features shared by all seeds: only the init differs.
        w_sh, _, _ = fit_probes(xs[0], ys[0], keys, **kw)
        # Batched accuracy (row count not a multiple of the block) equals per-seed numpy; random
        # labels keep it away from 0 and 1.
        y_eval = np.random.default_rng(0).integers(0, 4, ys.shape)
        acc = np.asarray(probe_accuracy(w_s, b_s, xs, jnp.asarray(y_eval), batch_size=12))
        xs, w_s, b_s, loss_s, w_sh = (np.asarray(a) for a in (xs, w_s, b_s, loss_s, w_sh))
        separate = [tuple(np.asarray(a) for a in fit) for fit in separate]
    assert w_s.shape == (seeds, 4, 16) and b_s.shape == (seeds, 4) and loss_s.shape == (seeds,)
    for s, (w, b, loss) in enumerate(separate):
        np.testing.assert_allclose(w_s[s], w, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b_s[s], b, rtol=0, atol=1e-10)
        np.testing.assert_allclose(loss_s[s], loss, rtol=1e-12)
    assert not np.allclose(w_s[0], w_s[1])  # different seeds, different probes
    np.testing.assert_allclose(w_sh[0], w_s[0], rtol=0, atol=1e-10)
    assert not np.allclose(w_sh[1], w_s[1])  # seed 1 saw seed 0's data

    for s in range(seeds):
        logits = xs[s] @ w_s[s].T + b_s[s]
        assert acc[s] == pytest.approx(np.mean(np.argmax(logits, 1) == y_eval[s]))
    assert 0.05 < acc.min() and acc.max() < 0.6


def test_torch_linear_init_matches_nn_linear_bounds():
    dim, classes = 50, 7
    w, b = torch_linear_init(jax.random.key(0), dim, classes)
    bound = 1 / np.sqrt(dim)
    assert w.shape == (classes, dim) and b.shape == (classes,)
    ref = torch.nn.Linear(dim, classes)  # torch's own init draws within the same bound
    with torch.no_grad():
        assert float(ref.weight.abs().max()) <= bound and float(ref.bias.abs().max()) <= bound
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound and np.abs(w).mean() == pytest.approx(bound / 2, rel=0.1)
    w2, _ = torch_linear_init(jax.random.key(1), dim, classes)
    assert not np.allclose(w, w2)
