"""``data.stream``'s epochs: minibatches read on the host and scanned a few steps per program
make the updates and epoch losses of the epoch program over the split held on the device."""

import types

import jax
import numpy as np
import pytest

from ddjax.data.stream import LoadedSplit
from ddjax.mkdt import epochs
from ddjax.mkdt.experts import epoch_permutations, expert_keys, mse_loss_fn, torch_sgd
from ddjax.mkdt.student import StudentRows
from ddjax.models import build_model
from ddjax.models.registry import dummy_input

N, BATCH = 42, 4  # 10 full steps (programs of 3, 3, 3 and 1 below) and a last step of 2


def _noise(key, images):
    """An augmentation that depends on its key only: a wrong step key changes the result."""
    return images + 0.1 * jax.random.normal(key, images.shape)


@pytest.mark.parametrize("augment", [None, _noise])
def test_streamed_epochs_equal_the_epoch_program(monkeypatch, augment):
    monkeypatch.setattr(epochs, "STEPS_PER_PROGRAM", 3)
    model = build_model("convnet", num_outputs=3, width=4, depth=1, image_size=(8, 8))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)
    spec = types.SimpleNamespace(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    rows = StudentRows(LoadedSplit(pixels, np.zeros(N, np.int32)), spec)
    targets = rng.normal(size=(N, 3)).astype(np.float32)
    optimizer = torch_sgd(0.05, 0.9, 1e-3)
    init_keys, data_keys, aug_keys = expert_keys(0, [0, 1])

    def train(data):
        epoch = epochs.student_epochs(mse_loss_fn(model.apply), optimizer, BATCH, augment, data)
        params = jax.vmap(lambda k: model.init(k, dummy_input((8, 8)))["params"])(init_keys)
        carry, losses = (params, {}, jax.vmap(optimizer.init)(params)), []
        for e in range(2):
            *carry, loss = epoch(carry, epoch_permutations(data_keys, e, N),
                                 jax.vmap(lambda k: jax.random.fold_in(k, e))(aug_keys))
            losses.append(np.asarray(loss))
        return carry[0], np.stack(losses)

    held, held_loss = train((rows.every_image(), targets))
    streamed, streamed_loss = train(rows.with_targets(targets))
    np.testing.assert_allclose(streamed_loss, held_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(held), jax.tree.leaves(streamed)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert not np.allclose(held_loss[0], held_loss[1])  # the epochs did train
