"""SSL train step with a tiny BatchNorm encoder: learning, optimisers, schedules, recipes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddjax.ssl import (
    AugmentConfig,
    BarlowTwinsProjector,
    SimCLRProjector,
    ViewAugmentConfig,
    barlow_twins_loss,
    init_ssl_state,
    make_optimizer,
    make_ssl_train_step,
    nt_xent_loss,
)
from ddjax.ssl import recipes
from ddjax.ssl.optim import make_schedule

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class TinyEncoder(nn.Module):
    """conv -> BatchNorm -> relu -> global average pool: 8 features."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return jnp.mean(nn.relu(x), axis=(1, 2))


def tiny_images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


LIGHT_VIEWS = ViewAugmentConfig(
    AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0),
    AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0),
)


def setup(loss_fn, projector, optimizer, joint=False):
    encoder = TinyEncoder()
    images = tiny_images()
    state = init_ssl_state(jax.random.key(0), encoder, projector, optimizer, images)
    step = make_ssl_train_step(
        encoder, projector, loss_fn, optimizer, LIGHT_VIEWS, MEAN, STD, encoder_joint_batch=joint
    )
    return encoder, images, state, jax.jit(step)


CASES = {  # loss, projector, encoder_joint_batch
    "barlow_twins": (
        functools.partial(barlow_twins_loss, lambd=0.0051),
        BarlowTwinsProjector((16,), 16),
        False,
    ),
    "simclr": (functools.partial(nt_xent_loss, temperature=0.5), SimCLRProjector(16, 8), True),
}


def differs(a, b):
    """Per leaf: does anything differ between the two pytrees?"""
    return jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), a, b)
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    """25 Adam steps on one fixed pair of views (compiled once per method, shared by tests)."""
    loss_fn, projector, joint = CASES[request.param]
    optimizer = make_optimizer("adam", 3e-3, 0.0, total_steps=40, schedule="constant")
    encoder, images, state0, step = setup(loss_fn, projector, optimizer, joint)
    state, losses = state0, []
    for _ in range(25):
        state, metrics = step(state, images, jax.random.key(1))  # same key: same views
        losses.append(float(metrics["loss"]))
    return encoder, images, state0, state, losses, metrics


def test_training_steps_reduce_the_loss_and_update_everything(trained):
    _, _, state0, state, losses, metrics = trained
    assert np.all(np.isfinite(losses)) and int(state.step) == 25
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05 * abs(np.mean(losses[:3]))
    assert all(differs(state0.params, state.params))
    # BatchNorm running statistics move in training mode.
    for net in ("encoder", "projector"):
        assert all(differs(state0.batch_stats[net], state.batch_stats[net]))
    assert set(metrics) >= {"loss", "grad_norm", "feature_std"}
    assert float(metrics["grad_norm"]) > 0 and 0 < float(metrics["feature_std"]) < 1


def test_lars_excludes_biases_and_norms_from_decay_and_adaptation():
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}
    grads = {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), 0.5)}
    lr, wd, eta = 0.1, 0.01, 0.02
    opt = make_optimizer(
        "lars", lr, wd, momentum=0.0, total_steps=10, schedule="constant", trust_coefficient=eta
    )
    updates, _ = opt.update(grads, opt.init(params), params)
    # Kernel: g + wd * w, rescaled to eta * |w| / |g + wd * w|, times -lr.
    g = 0.5 + wd
    expected_kernel = -lr * eta * np.sqrt(6.0) / (g * np.sqrt(6.0)) * g
    np.testing.assert_allclose(np.asarray(updates["kernel"]), expected_kernel, rtol=1e-5)
    # Bias: plain SGD, no decay, no trust ratio.
    np.testing.assert_allclose(np.asarray(updates["bias"]), -lr * 0.5, rtol=1e-6)


def test_sgd_and_adam_use_coupled_l2_and_adamw_decoupled():
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    sgd = make_optimizer("sgd", 0.1, 0.5, momentum=0.0, schedule="constant")
    updates, _ = sgd.update(zero, sgd.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.5 * 2.0)
    np.testing.assert_allclose(np.asarray(updates["b"]), -0.1 * 0.5 * 2.0)  # torch decays biases
    adamw = make_optimizer("adamw", 0.1, 0.5, schedule="constant", exclude_bias_and_norm=True)
    updates, _ = adamw.update(zero, adamw.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["b"]), 0.0)
    with pytest.raises(ValueError):
        make_optimizer("rmsprop", 0.1)


def test_warmup_cosine_schedule():
    sched = make_schedule(1.0, total_steps=110, warmup_steps=10, warmup_init_lr=0.0, end_lr=0.0)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


def test_recipes_build_their_parts():
    bt = recipes.barlow_twins_cifar()
    assert (bt.lambd, bt.loss_scale, bt.optimizer_name) == (0.0051, 0.1, "lars")
    assert (bt.lr, bt.weight_decay, bt.trust_coefficient, bt.batch_size) == (0.3, 1e-4, 0.02, 256)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    expected = 0.1 * float(barlow_twins_loss(z, 2.0 * z[::-1], 0.0051))
    assert float(bt.loss_fn()(z, 2.0 * z[::-1])) == pytest.approx(expected, rel=1e-6)
    assert isinstance(bt.projector(), BarlowTwinsProjector) and bt.projector().output_dim == 2048
    assert isinstance(bt.optimizer(steps_per_epoch=5), optax.GradientTransformation)
    sc = recipes.simclr_cifar()
    assert (sc.temperature, sc.optimizer_name, sc.lr, sc.weight_decay) == (0.5, "adam", 1e-3, 1e-6)
    assert (sc.epochs, sc.batch_size, sc.schedule) == (400, 512, "constant")
    assert sc.encoder_joint_batch
    head = sc.projector()
    variables = head.init(jax.random.key(0), jnp.ones((4, 512)), train=False)
    assert variables["params"]["linear0"]["dense"]["kernel"].shape == (512, 512)
    assert "bias" not in variables["params"]["linear0"]["dense"]
    assert "bn1" not in variables["params"]  # last BatchNorm has no affine parameters
    assert head.apply(variables, jnp.ones((4, 512)), train=False).shape == (4, 128)
