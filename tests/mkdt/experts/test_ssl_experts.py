"""Barlow Twins experts (the naive MTT-SSL baseline): the epoch's loss is Barlow Twins between the
student's outputs on two DSA views made with the step's keys, recomputed here in numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.mkdt.dsa import DsaParams, dsa_augment
from ddjax.mkdt.experts import epoch_permutations, expert_keys, make_student_epoch, torch_sgd
from ddjax.mkdt.objectives import by_expert_loss
from ddjax.models import build_model
from ddjax.models.registry import dummy_input
from ddjax.mkdt.defaults import mkdt_config

N, BATCH, DIM, STRATEGY = 16, 8, 6, "color_crop_flip"


def numpy_barlow_twins(z1, z2, lambd, eps=1e-5):
    """Barlow Twins written out in float64: BatchNorm1d(affine=False) statistics, sum-reduced."""
    a, b = (np.asarray(z, np.float64) for z in (z1, z2))
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    c = a.T @ b / a.shape[0]
    on = np.sum((1 - np.diag(c)) ** 2)
    return on + lambd * (np.sum(c ** 2) - np.sum(np.diag(c) ** 2))


def _section(lambd=0.05):
    section = mkdt_config().experts
    section.update({"loss": "barlow_twins", "ssl_lambda": lambd, "dsa_strategy": STRATEGY,
                    "ssl_output_dim": DIM})
    return section


def test_epoch_loss_is_barlow_twins_of_two_dsa_views_with_the_step_keys():
    section = _section()
    model = build_model("convnet", num_outputs=DIM, width=4, depth=1, image_size=(8, 8))
    objective = by_expert_loss("barlow_twins")
    loss_fn, augment = objective.expert_objective(model.apply, section, objective.identity(section))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(N, 8, 8, 3)).astype(np.float32))
    targets = jnp.zeros((N, 0), jnp.float32)  # Barlow Twins experts have no targets
    init_keys, data_keys, aug_keys = expert_keys(0, [0])
    params = jax.jit(jax.vmap(lambda k: model.init(k, dummy_input((8, 8)))["params"]))(init_keys)
    p0 = jax.tree.map(lambda x: np.asarray(x[0]), params)  # the epoch donates its parameters
    frozen = torch_sgd(0.0, 0.0, 0.0)  # lr 0: the epoch loss is the mean of the per-step losses
    perms = epoch_permutations(data_keys, 0, N)
    _, _, _, loss = make_student_epoch(loss_fn, frozen, BATCH, augment)(
        params, {}, jax.vmap(frozen.init)(params), images, targets, perms, aug_keys)

    apply = jax.jit(model.apply)
    dsa = jax.jit(lambda key, x: dsa_augment(key, x, DsaParams(aug_mode="M"), STRATEGY))
    expected = []
    for t in range(N // BATCH):
        batch = images[np.asarray(perms[0, t * BATCH:(t + 1) * BATCH])]
        step_key = jax.random.fold_in(aug_keys[0], t)
        views = [dsa(jax.random.fold_in(step_key, v), batch) for v in (0, 1)]
        assert not np.allclose(views[0], views[1])
        outs = [np.asarray(apply({"params": p0}, v)) for v in views]
        expected.append(numpy_barlow_twins(*outs, lambd=0.05))
    np.testing.assert_allclose(float(loss[0]), np.mean(expected), rtol=1e-5)
    assert objective.identity(section) == {"method": "barlow_twins", "lambda": 0.05, "views": "dsa",
                                     "dsa_strategy": STRATEGY, "dsa_mode": "M"}

