"""Vmapped expert epochs against a hand-written PyTorch-SGD loop, and vmapped == alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.mkdt.dsa import DsaParams, dsa_augment
from ddjax.mkdt.experts import (epoch_permutations, expert_keys, make_student_epoch, mse_loss_fn,
                                torch_sgd)
from ddjax.models import build_model
from ddjax.models.registry import dummy_input

LR, MOMENTUM, WD, BATCH = 0.05, 0.9, 1e-3, 16
N = 40  # two full batches of 16 and a last partial batch of 8


@pytest.fixture(scope="module")
def setup():
    model = build_model("convnet", num_outputs=3, width=4, depth=1, image_size=(8, 8))  # fast to compile
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(N, 8, 8, 3)).astype(np.float32))
    targets = jnp.asarray(rng.normal(size=(N, 3)).astype(np.float32))
    init = jax.vmap(lambda k: model.init(k, dummy_input((8, 8)))["params"])
    optimizer = torch_sgd(LR, MOMENTUM, WD)
    epoch_fn = make_student_epoch(mse_loss_fn(model.apply), optimizer, BATCH)
    return model, images, targets, init, optimizer, epoch_fn


def _torch_sgd_epochs(model, params, images, targets, perms):
    """PyTorch's SGD written out: g += wd*p; buf = g (first) or m*buf + g; p -= lr*buf."""
    loss = lambda p, x, y: jnp.mean((model.apply({"params": p}, x) - y) ** 2)
    buf, gradient = None, jax.jit(jax.grad(loss))
    for perm in perms:
        for start in range(0, N, BATCH):
            idx = np.asarray(perm[start:start + BATCH])
            grads = gradient(params, images[idx], targets[idx])
            grads = jax.tree.map(lambda g, p: g + WD * p, grads, params)
            buf = grads if buf is None else jax.tree.map(lambda b, g: MOMENTUM * b + g, buf, grads)
            params = jax.tree.map(lambda p, b: p - LR * b, params, buf)
    return params


def test_epochs_equal_a_plain_torch_sgd_loop(setup):
    model, images, targets, init, optimizer, epoch_fn = setup
    init_keys, data_keys, aug_keys = expert_keys(0, [0, 1])
    params = init(init_keys)
    expected = _torch_sgd_epochs(model, jax.tree.map(lambda x: x[1], params), images, targets,
                                 [epoch_permutations(data_keys, e, N)[1] for e in range(2)])
    opt = jax.vmap(optimizer.init)(params)
    for epoch in range(2):
        params, _, opt, loss = epoch_fn(params, {}, opt, images, targets, epoch_permutations(data_keys, epoch, N),
                                     aug_keys)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(jax.tree.map(lambda x: x[1], params))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert loss.shape == (2,) and np.isfinite(np.asarray(loss)).all()


@pytest.mark.parametrize("with_dsa", [False, True])
def test_vmapped_expert_equals_the_same_expert_alone(setup, with_dsa):
    model, images, targets, init, optimizer, epoch_fn = setup
    if with_dsa:
        augment = lambda key, x: dsa_augment(key, x, DsaParams(), "flip_crop_cutout")
        epoch_fn = make_student_epoch(mse_loss_fn(model.apply), optimizer, BATCH, augment)

    def train(experts):
        init_keys, data_keys, aug_keys = expert_keys(3, experts)
        params = init(init_keys)
        opt = jax.vmap(optimizer.init)(params)
        for epoch in range(2):
            params, _, opt, _ = epoch_fn(params, {}, opt, images, targets, epoch_permutations(data_keys, epoch, N),
                                      aug_keys)
        return params

    together = train([4, 7, 9])
    alone = train([7])
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(together)[0][0], jax.tree.leaves(together)[0][1])


def test_epoch_loss_is_the_per_example_mean(setup):
    model, images, targets, init, optimizer, _ = setup
    # With lr 0 the parameters stay put, so the epoch loss is the mean per-example MSE.
    frozen = make_student_epoch(mse_loss_fn(model.apply), torch_sgd(0.0, 0.0, 0.0), BATCH)
    init_keys, data_keys, aug_keys = expert_keys(1, [0])
    params = init(init_keys)
    out = model.apply({"params": jax.tree.map(lambda x: x[0], params)}, images)
    expected = np.mean((np.asarray(out, np.float64) - np.asarray(targets, np.float64)) ** 2)
    _, _, _, loss = frozen(params, {}, jax.vmap(optimizer.init)(params), images, targets,
                        epoch_permutations(data_keys, 0, N), aug_keys)
    np.testing.assert_allclose(float(loss[0]), float(expected), rtol=1e-5)
