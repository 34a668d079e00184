"""Inner-loop stability diagnostics (``ddjax.mkdt.stability``) against independent answers: the
top eigenvalue of quadratics with chosen spectra, the closed form of dθ_n/dη for gradient descent
on a quadratic and float64 central differences of a Python loop, the stability edge η·λ = 2, and a
tiny MLP whose targets are scaled up (the issue's rising sharpness)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.mkdt.mtt import inner_step, masked_mse, minibatch_loss, unroll, unroll_inputs
from ddjax.mkdt.stability import diagnose, growth_rate, lr_sensitivity, top_hessian_eigenvalue

STABLE_EIGS = np.array([10.0, 7.0, 5.0, 3.0, 2.0, 1.0])  # at lr 0.15: |1 - lr*lambda| <= 0.85


def _symmetric(eigs, seed=0):
    """Q diag(eigs) Qᵀ with a random orthogonal Q (numpy float64)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


def _quadratic(a):
    a32 = jnp.asarray(a, jnp.float32)
    return lambda theta: 0.5 * theta @ a32 @ theta


def _gd_step(a):
    """θ − η·Aθ: a gradient step on ½θᵀAθ, the scanned inputs unused."""
    a_j = jnp.asarray(a)
    return lambda theta, lr, _: theta - lr * (a_j.astype(theta.dtype) @ theta)


def _theta0(n=6, seed=1):
    return np.random.default_rng(seed).normal(size=n)


def test_top_eigenvalue_of_a_quadratic_is_its_largest_eigenvalue_under_jit():
    a = _symmetric([10.0, 4.0, 3.0, 1.0, 0.5, 0.1])
    estimate = jax.jit(lambda p, k: top_hessian_eigenvalue(_quadratic(a), p, k, iterations=20))(
        jnp.asarray(_theta0(), jnp.float32), jax.random.key(0))
    np.testing.assert_allclose(float(estimate), 10.0, rtol=1e-4)


def test_top_eigenvalue_on_a_pytree_of_parameters():
    a = jnp.asarray(_symmetric([6.0, 2.5, 2.0, 1.0, 0.3, 0.2], seed=3), jnp.float32)

    def loss(tree):  # the flat vector in our own order: [w (2, 2) row-major, b (2,)]
        theta = jnp.concatenate([tree["w"].reshape(-1), tree["b"]])
        return 0.5 * theta @ a @ theta

    params = {"b": jnp.ones(2), "w": jnp.arange(4.0).reshape(2, 2)}
    estimate = top_hessian_eigenvalue(loss, params, jax.random.key(1))
    np.testing.assert_allclose(float(estimate), 6.0, rtol=1e-4)


@pytest.mark.parametrize("eigenvalues, top", [([-8.0, 5.0, 2.0, 1.0, -0.5, 0.3], 5.0),
                                              ([-8.0, -6.0, -4.0, -3.0, -2.0, -0.1], -0.1)])
def test_a_dominant_negative_curvature_does_not_hide_the_top_eigenvalue(eigenvalues, top):
    """The largest magnitude is -8, but a gradient step's stability is bounded by the largest
    algebraic eigenvalue."""
    a = _symmetric(eigenvalues, seed=4)
    estimate = top_hessian_eigenvalue(_quadratic(a), jnp.asarray(_theta0(), jnp.float32), jax.random.key(2),
                                      iterations=60)
    np.testing.assert_allclose(float(estimate), top, rtol=1e-3, atol=1e-4)


def test_lr_sensitivity_matches_the_closed_form_of_gradient_descent_on_a_quadratic():
    a, lr, steps = _symmetric(STABLE_EIGS), 0.15, 12
    theta0 = _theta0()
    norms, theta_n = jax.jit(lambda t: lr_sensitivity(_gd_step(a), t, lr, jnp.zeros(steps), return_params=True))(
        jnp.asarray(theta0, jnp.float32))
    # θ_n = (I − ηA)^n θ_0, so dθ_n/dη = −n A (I − ηA)^(n−1) θ_0.
    m = np.eye(6) - lr * a
    expected = [np.linalg.norm(-n * a @ np.linalg.matrix_power(m, n - 1) @ theta0) for n in range(1, steps + 1)]
    assert norms.shape == (steps,)
    np.testing.assert_allclose(np.asarray(norms), expected, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(theta_n), np.linalg.matrix_power(m, steps) @ theta0, rtol=1e-4, atol=1e-6)


def test_lr_sensitivity_matches_float64_central_differences_of_a_python_loop():
    # Stable and unstable (lr*lambda_max = 3.2 > 2): the derivative is exact either way.
    for lr in (0.15, 0.32):
        a, steps, h = _symmetric(STABLE_EIGS, seed=5), 8, 1e-6
        with jax.enable_x64(True):
            theta0, a64 = jnp.asarray(_theta0(seed=6), jnp.float64), jnp.asarray(a, jnp.float64)

            def trajectory(eta):
                thetas, theta = [], theta0
                for _ in range(steps):
                    theta = theta - eta * (a64 @ theta)
                    thetas.append(theta)
                return thetas

            plus, minus = trajectory(lr + h), trajectory(lr - h)
            finite_diff = [float(jnp.linalg.norm((p - m) / (2 * h))) for p, m in zip(plus, minus)]
            norms = lr_sensitivity(_gd_step(a64), theta0, jnp.asarray(lr, jnp.float64), jnp.zeros(steps))
            assert norms.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(norms), finite_diff, rtol=1e-6)


def test_growth_rate_removes_linear_growth_and_reads_the_second_half():
    n = np.arange(1.0, 21.0)
    np.testing.assert_allclose(float(growth_rate(jnp.asarray(3.0 * n))), 1.0, rtol=1e-6)  # flat: −n·g
    np.testing.assert_allclose(float(growth_rate(jnp.asarray(n * 1.7 ** n))), 1.7, rtol=1e-5)
    # The first half does not count: a burst in steps 1..10 leaves the rate of 11..20.
    burst = np.where(n <= 10, n * 50.0 ** n, n * 50.0 ** 10 * 0.8 ** (n - 10))
    np.testing.assert_allclose(float(growth_rate(jnp.asarray(burst))), 0.8, rtol=1e-5)
    assert np.isnan(float(growth_rate(jnp.ones(1))))


def _check_quadratic(a, lr, steps=20):
    """The distill stage's check on a quadratic: sharpness at both ends, growth, verdict."""
    theta0 = jnp.asarray(_theta0(), jnp.float32)
    norms, theta_n = lr_sensitivity(_gd_step(a), theta0, lr, jnp.zeros(steps), return_params=True)
    lam_start = top_hessian_eigenvalue(_quadratic(a), theta0, jax.random.key(0))
    lam_end = top_hessian_eigenvalue(_quadratic(a), theta_n, jax.random.key(1))
    growth = float(growth_rate(norms))
    return growth, lam_start, lam_end, diagnose(lr, lam_start, lam_end, growth)


def test_stable_descent_is_ok_and_scaling_the_curvature_past_the_edge_is_not():
    a, lr = _symmetric(STABLE_EIGS), 0.15
    growth, _, _, (ok, message) = _check_quadratic(a, lr)  # lr * 10 = 1.5 < 2
    # Normalised by n, ‖dθ_n/dη‖ decays like the slowest mode's |1 − 0.15·1| = 0.85.
    assert growth < 1 and abs(growth - 0.85) < 0.02
    assert ok and message is None

    growth, lam_start, lam_end, (ok, message) = _check_quadratic(2.0 * a, lr)  # lr * 20 = 3 > 2
    # The top direction now flips and expands by |1 − 0.15·20| = 2 per step.
    assert growth > 1 and abs(growth - 2.0) < 0.01
    np.testing.assert_allclose([float(lam_start), float(lam_end)], [20.0, 20.0], rtol=1e-4)
    assert not ok and "\n" not in message
    for expected in ("distill.lr_init", "distill.syn_steps", "lr 0.15", "sharpness 20 -> 20",
                     "lr*sharpness 3", "growth 2x", "2/20 = 0.1"):
        assert expected in message, (expected, message)


def test_diagnose_flags_growth_alone_a_non_positive_lr_and_non_finite_values():
    assert diagnose(0.1, 5.0, 19.0, 1.2) == (True, None)  # lr*lambda 1.9, mild growth
    ok, message = diagnose(0.1, 5.0, 12.0, 4.9)  # curvature fine at both probes, divergence between
    assert not ok and "growth >= 1.5" in message and "lr*sharpness >= 2" not in message
    ok, message = diagnose(0.1, 7.3, 50.2, 4.9)  # the numbers
    assert not ok and "lr*sharpness 5.02" in message and "2/50.2 = 0.0398" in message
    assert "experts.standardize_targets=True" in message
    ok, message = diagnose(0.1, 7.3, 50.2, 4.9, targets_standardized=True)  # no fix already applied
    assert not ok and "2/50.2 = 0.0398" in message and "standardi" not in message
    ok, message = diagnose(-0.01, 5.0, 5.0, 0.9)
    assert not ok and "-0.01 <= 0" in message
    for bad in ((0.1, float("nan"), 5.0, 1.0), (0.1, 5.0, 5.0, float("inf")), (float("nan"), 1.0, 1.0, 1.0)):
        ok, message = diagnose(*bad)
        assert not ok and "non-finite" in message and "\n" not in message


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(nn.Dense(16)(x)))


def _mlp_problem(steps=10, n_syn=8, batch=4):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(n_syn, 5)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(n_syn, 3)), jnp.float32)
    model = _MLP()
    params0 = model.init(jax.random.key(0), images)["params"]
    idx = jnp.asarray(np.stack([rng.permutation(n_syn)[:batch] for _ in range(steps)]))
    mask = jnp.ones((steps, batch)).at[0, batch - 1].set(0.0)  # a padded first chunk, as mtt's
    return model, params0, images, targets, idx, mask


def test_lr_sensitivity_runs_the_unroll_itself():
    """Its primal output is ``mtt.unroll``'s θ_N, with a padded mask, augmentation and bf16."""
    model, params0, images, targets, idx, mask = _mlp_problem()
    loss = masked_mse(model.apply)
    augment = lambda key, x: x + 0.1 * jax.random.normal(key, x.shape)
    aug_key = jax.random.key(7)
    for kwargs in ({}, {"augment": augment, "aug_key": aug_key}, {"inner_dtype": jnp.bfloat16}):
        _, theta_n = lr_sensitivity(inner_step(loss, images, targets, **kwargs), params0, 0.1,
                                    unroll_inputs(idx, mask), return_params=True)
        expected = unroll(loss, params0, images, targets, jnp.asarray(0.1), idx, mask, **kwargs)
        for got, want in zip(jax.tree.leaves(theta_n), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # minibatch_loss is the masked mean over step 0's real members.
    real = np.asarray(idx[0])[np.asarray(mask[0]) > 0]
    direct = jnp.mean((model.apply({"params": params0}, images[real]) - targets[real]) ** 2)
    np.testing.assert_allclose(minibatch_loss(loss, images, targets)(params0, (idx[0], mask[0], 0)), direct,
                               rtol=1e-6)


def test_scaling_the_targets_up_sharpens_the_end_of_the_unroll():
    model, params0, images, targets, idx, mask = _mlp_problem()
    loss, inputs, lr = masked_mse(model.apply), unroll_inputs(idx, mask), 0.1
    last = (idx[-1], mask[-1], idx.shape[0] - 1)

    def sharpness_at_end(scale):
        y = scale * targets
        _, theta_n = lr_sensitivity(inner_step(loss, images, y), params0, lr, inputs, return_params=True)
        batch_loss = minibatch_loss(loss, images, y)
        return float(top_hessian_eigenvalue(lambda p: batch_loss(p, last), theta_n, jax.random.key(3)))

    original, scaled = sharpness_at_end(1.0), sharpness_at_end(10.0)
    assert np.isfinite(original) and scaled > 2 * original
