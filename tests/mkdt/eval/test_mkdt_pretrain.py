"""Evaluation pre-training and feature extraction against plain loops written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.checkpoint import RunCheckpointer
from ddjax.data.stream import in_memory
from ddjax.mkdt.pretrain import features, init_encoders, pretrain, seed_keys
from ddjax.mkdt.experts import epoch_permutations
from ddjax.models import build_model

N, HW, DIM, BATCH = 20, (8, 8), 3, 8  # two full batches of 8 and a last one of 4
SGD = dict(momentum=0.9, weight_decay=1e-3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, *HW, 3)).astype(np.float32),
            rng.normal(size=(N, DIM)).astype(np.float32))


@pytest.fixture(scope="module", params=["convnet", "convnet_bn"])
def model(request):
    return build_model(request.param, num_outputs=DIM, width=4, depth=1, image_size=HW)  # fast to compile


def _hand_written_epochs(model, params, state, images, targets, perms, lr):
    """PyTorch SGD written out (g += wd p; buf = m buf + g; p -= lr buf), BatchNorm in train mode
    with its running statistics carried from batch to batch."""
    mom, wd = SGD["momentum"], SGD["weight_decay"]
    buf = None

    def loss(p, s, x, y):
        if s:
            out, s = model.apply({"params": p, **s}, x, train=True, mutable=list(s))
        else:
            out = model.apply({"params": p}, x)
        return jnp.mean((out - y) ** 2), s

    gradient = jax.jit(jax.value_and_grad(loss, has_aux=True))
    for perm in perms:
        for start in range(0, N, BATCH):
            idx = np.asarray(perm[start:start + BATCH])
            (_, state), g = gradient(params, state, images[idx], targets[idx])
            g = jax.tree.map(lambda g, p: g + wd * p, g, params)
            buf = g if buf is None else jax.tree.map(lambda b, g: mom * b + g, buf, g)
            params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
    return params, state


def test_pretraining_equals_a_hand_written_sgd_loop(model, data):
    images, targets = data
    seeds = [3, 5]
    params, state = init_encoders(model, seed_keys(seeds, 0), HW)
    order = seed_keys(seeds, 1)
    one = lambda tree: jax.tree.map(lambda x: np.asarray(x[1]), tree)  # noqa: E731
    start_p, start_s = one(params), one(state)
    got_p, got_s, loss = pretrain(model, params, state, (images, targets), order, lr=0.05, epochs=2,
                                  batch_size=BATCH, **SGD)
    perms = [epoch_permutations(order, e, N)[1] for e in range(2)]
    want_p, want_s = _hand_written_epochs(model, start_p, start_s, images, targets, perms, 0.05)
    for a, b in zip(jax.tree.leaves((want_p, want_s)), jax.tree.leaves((one(got_p), one(got_s)))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=1e-5)
    assert loss.shape == (2,) and np.isfinite(loss).all()
    assert bool(start_s) == (model.norm == "batchnorm")


def test_pretraining_resumes_from_its_last_epoch_checkpoint_exactly(model, data, tmp_path):
    images, targets = data
    order = seed_keys([3, 5], 1)

    def run(epochs, init_seeds=(3, 5), **kwargs):
        params, state = init_encoders(model, seed_keys(list(init_seeds), 0), HW)
        return pretrain(model, params, state, (images, targets), order, lr=0.05, epochs=epochs,
                        batch_size=BATCH, **SGD, **kwargs)

    want = run(3)
    with RunCheckpointer(tmp_path / "resume") as checkpoints:
        run(1, checkpoints=checkpoints, checkpoint_seconds=0)  # stopped after its first epoch
        assert checkpoints.all_steps() == [1]
        # Other initial weights: only a run that takes the checkpoint's weights can match.
        got = run(3, init_seeds=(7, 8), checkpoints=checkpoints, checkpoint_seconds=0)
        assert checkpoints.all_steps() == [2, 3]
        run(5, checkpoints=checkpoints)  # epochs far shorter than a minute: no save
        assert checkpoints.all_steps() == [2, 3]
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_lr_zero_leaves_the_weights_unchanged(model, data):
    images, targets = data
    params, state = init_encoders(model, seed_keys([0, 1], 0), HW)
    before = jax.tree.map(np.asarray, params)
    after, _, _ = pretrain(model, params, state, (images, targets), seed_keys([0, 1], 1), lr=0.0,
                           epochs=2, batch_size=BATCH, **SGD)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_eval_features_are_each_seeds_own_forward_pass(model, data):
    images, _ = data
    params, state = init_encoders(model, seed_keys([0, 1], 0), HW)
    idx = np.stack([np.arange(13), np.arange(13)[::-1] + 5])  # 13 rows: a padded last batch
    got, _ = features(model, params, state, in_memory(images), idx, lambda x: x * 2.0,
                      batch_size=BATCH)
    for s in range(2):
        variables = {"params": jax.tree.map(lambda x: x[s], params),
                     **jax.tree.map(lambda x: x[s], state)}
        want = model.apply(variables, images[idx[s]] * 2.0, method="features")
        np.testing.assert_allclose(got[s], np.asarray(want), rtol=1e-5, atol=1e-5)
    assert got.shape[:2] == (2, 13)


def test_train_mode_features_run_consecutive_batches_and_update_running_stats(data):
    model = build_model("convnet_bn", num_outputs=DIM, width=4, depth=1, image_size=HW)
    images, _ = data
    params, state = init_encoders(model, seed_keys([2], 0), HW)
    idx = np.arange(N)[None]
    got, new_state = features(model, params, state, in_memory(images), idx, lambda x: x,
                              batch_size=BATCH, train_mode=True)
    p, s = jax.tree.map(lambda x: x[0], (params, state))
    forward = jax.jit(lambda p, s, x: model.apply({"params": p, **s}, x, train=True,
                                                  mutable=list(s), method="features"))
    want = []
    for start in range(0, N, BATCH):
        z, s = forward(p, s, images[start:start + BATCH])
        want.append(np.asarray(z))
    np.testing.assert_allclose(got[0], np.concatenate(want), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(new_state)):
        np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a), rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(new_state)[0], jax.tree.leaves(state)[0])
