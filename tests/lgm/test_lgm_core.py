"""The LGM objective: closed-form probe gradients, the meta-loss, chunked meta-gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.lgm import step as lgm
from ddjax.lgm import pyramid


def test_closed_form_probe_gradient_equals_jax_grad():
    kz, kw, kb, ky = jax.random.split(jax.random.key(0), 4)
    Z = 3.0 * jax.random.normal(kz, (37, 11))
    W = jax.random.normal(kw, (5, 11))
    b = jax.random.normal(kb, (5,))
    Y = jax.nn.one_hot(jax.random.randint(ky, (37,), 0, 5), 5)
    closed = lgm.probe_grad_closed_form(W, b, Z, Y)
    dW, db = jax.grad(lambda W, b: -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(Z @ W.T + b), -1)),
                      argnums=(0, 1))(W, b)
    np.testing.assert_allclose(closed, np.concatenate([np.ravel(dW), db]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lgm.probe_grad_autodiff(W, b, Z, Y), closed, rtol=1e-5, atol=1e-7)
    # the derivative of the closed form with respect to the features matches as well
    v = jax.random.normal(jax.random.key(1), closed.shape)
    dz_closed = jax.grad(lambda z: jnp.dot(v, lgm.probe_grad_closed_form(W, b, z, Y)))(Z)
    dz_auto = jax.grad(lambda z: jnp.dot(v, lgm.probe_grad_autodiff(W, b, z, Y)))(Z)
    np.testing.assert_allclose(dz_closed, dz_auto, rtol=1e-4, atol=1e-6)


def test_probes_and_cosine_follow_the_reference():
    probes = lgm.draw_probes(jax.random.key(0), 3, 10, 400)
    assert probes.W.shape == (3, 10, 400) and not np.any(np.asarray(probes.b))
    assert abs(float(jnp.std(probes.W)) - 0.01) < 5e-4
    a, b = jnp.array([1.0, 0.0, 1.0]), jnp.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(lgm.cosine_distance(a, b), 0.5, rtol=1e-6)
    g_real = jax.random.normal(jax.random.key(1), (3, 10 * 400 + 10))
    Z = jax.random.normal(jax.random.key(2), (20, 400))
    Y = jax.nn.one_hot(jnp.arange(20) % 10, 10)
    each = [lgm.matching_loss(lgm.Probes(probes.W[k:k + 1], probes.b[k:k + 1]), g_real[k:k + 1],
                              Z, Y) for k in range(3)]
    np.testing.assert_allclose(lgm.matching_loss(probes, g_real, Z, Y), np.mean(each), rtol=1e-6)


def _problem(backbone, **changes):
    base = lgm.LgmProblem(features=backbone.features, mean=backbone.mean, std=backbone.std,
                          feature_dim=backbone.feature_dim, num_classes=3, crop_res=16, syn_res=16,
                          augs=3)
    return dataclasses.replace(base, **changes)


def _setup(seed=0):
    levels = pyramid.init_levels(jax.random.key(seed), 6, mode="pyramid", syn_res=16)
    active = 1
    for k in range(3):
        levels, active = pyramid.extend_levels(levels, active, jax.random.key(seed + 10 + k))
    x_real = jax.random.uniform(jax.random.key(seed + 1), (18, 16, 16, 3))
    return levels, x_real, jnp.arange(18) % 3, jnp.repeat(jnp.arange(3), 2)


def test_chunked_meta_gradient_equals_unchunked(tiny):
    levels, x_real, y_real, syn = _setup()
    whole = _problem(tiny, num_probes=2)
    chunked = dataclasses.replace(whole, chunk_size=7)   # 18 rows: chunks of 7, 7 and a ragged 4

    def run(problem):
        return jax.jit(lambda lv: lgm.lgm_grads(problem, lv, tiny.variables, x_real, y_real, syn,
                                                jax.random.key(5)))(levels)

    loss_a, grad_a = run(whole)
    loss_b, grad_b = run(chunked)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(grad_a, grad_b):
        assert float(jnp.abs(a).max()) > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))


def test_meta_gradient_matches_finite_differences(smooth):
    """In float64, along a random direction, through decode, augmentation and the backbone."""
    levels, x_real, y_real, syn = _setup(1)
    problem = _problem(smooth, augs=2)
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        levels, variables = f64(levels), f64(smooth.variables)
        probes = f64(lgm.draw_probes(jax.random.key(3), 1, 3, smooth.feature_dim))
        g_real = jax.jit(lambda x: lgm.real_gradients(problem, variables, probes, x, y_real[:12],
                                                      jax.random.key(4)))(f64(x_real[:12]))
        value_and_grad = jax.jit(jax.value_and_grad(
            lambda lv: lgm.meta_loss(problem, lv, variables, probes, g_real, syn,
                                     jax.random.key(6))))
        _, grads = value_and_grad(levels)
        direction = [jax.random.normal(jax.random.key(20 + i), lv.shape, jnp.float64)
                     for i, lv in enumerate(levels)]
        eps = 1e-6
        plus = value_and_grad([lv + eps * d for lv, d in zip(levels, direction)])[0]
        minus = value_and_grad([lv - eps * d for lv, d in zip(levels, direction)])[0]
        numeric = float((plus - minus) / (2 * eps))
        analytic = float(sum(jnp.vdot(g, d) for g, d in zip(grads, direction)))
    assert abs(analytic) > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_meta_loss_is_zero_for_the_real_batch_under_identical_augmentation(smooth):
    images = jax.random.uniform(jax.random.key(0), (6, 16, 16, 3), minval=0.05, maxval=0.95)
    labels = jnp.repeat(jnp.arange(3), 2)
    problem = _problem(smooth, decorrelate=False)
    levels = [jnp.log(images / (1 - images)) / 2.0]          # pixels with sigmoid(2x) = images
    np.testing.assert_allclose(problem.decode(levels), images, atol=1e-6)
    probes = lgm.draw_probes(jax.random.key(1), 2, 3, smooth.feature_dim)
    real = jnp.tile(images, (3, 1, 1, 1))                      # the real batch = the A copies

    @jax.jit
    def losses(real_key, syn_key):
        g_real = lgm.real_gradients(problem, smooth.variables, probes, real, jnp.tile(labels, 3),
                                    real_key)
        return lgm.meta_loss(problem, levels, smooth.variables, probes, g_real, labels, syn_key)

    assert abs(float(losses(jax.random.key(7), jax.random.key(7)))) < 1e-5
    assert float(losses(jax.random.key(7), jax.random.key(8))) > 1e-3
