"""Trajectory matching core: the scanned unroll against a Python loop, the meta-gradient
against finite differences, the loss at its closed-form values, the outer SGD, the samplers."""

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.mkdt.mtt import (make_meta_loss, make_outer_step, masked_cross_entropy, masked_mse,
                               match_loss, outer_optimizer, unroll)
from ddjax.mkdt.sampling import ExpertCycle, SyntheticBatches
from ddjax.models import build_model
from ddjax.models.registry import dummy_input

STEPS, BATCH, N_SYN = 3, 4, 6


def _problem(dtype=jnp.float32, seed=0):
    # One conv block: the unroll's algebra is the same at any depth, and XLA compiles the
    # second-order gradients of three blocks about 3x slower.
    model = build_model("convnet", num_outputs=3, width=4, depth=1, image_size=(8, 8))
    keys = jax.random.split(jax.random.key(seed), 2)
    start = model.init(keys[0], dummy_input((8, 8)))["params"]
    target = jax.tree.map(lambda p, k: p + 0.05 * jax.random.normal(k, p.shape), start,
                          jax.tree.unflatten(jax.tree.structure(start),
                                             list(jax.random.split(keys[1], len(jax.tree.leaves(start))))))
    rng = np.random.default_rng(seed)
    syn = {"images": jnp.asarray(rng.normal(size=(N_SYN, 8, 8, 3)), dtype),
           "targets": jnp.asarray(rng.normal(size=(N_SYN, 3)), dtype),
           "lr": jnp.asarray(0.1, dtype)}
    idx, mask = SyntheticBatches(N_SYN, BATCH).next_steps(STEPS, np.random.default_rng(seed))
    cast = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)
    return model, cast(start), cast(target), syn, jnp.asarray(idx), jnp.asarray(mask, dtype)


def _loop_meta_loss(model, syn, start, target, idx, mask, augment=None, aug_key=None, frozen=0):
    """The same unroll written as a plain Python loop over explicit sub-batches (no masks); the
    first ``frozen`` steps see the learnables as constants (truncated backprop)."""
    loss = lambda p, x, y: jnp.mean((model.apply({"params": p}, x) - y) ** 2)
    idx, mask = np.asarray(idx), np.asarray(mask)
    params, learnables = start, syn
    for s in range(idx.shape[0]):
        syn = jax.lax.stop_gradient(learnables) if s < frozen else learnables
        real = idx[s][mask[s] > 0]
        x = syn["images"][real]
        if augment is not None:  # per-sample ops: augmenting only the real members is the same
            x = augment(jax.random.fold_in(aug_key, s), syn["images"][idx[s]])[mask[s] > 0]
        grads = jax.grad(loss)(params, x, syn["targets"][real])
        params = jax.tree.map(lambda p, g: p - syn["lr"] * g, params, grads)
    sq = lambda a, b: sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return sq(params, target) / sq(start, target)


def test_scan_checkpoint_unroll_equals_python_loop_in_value_and_gradient():
    model, start, target, syn, idx, mask = _problem()
    assert float(mask.sum()) < idx.size  # the remainder chunk is padded: masks are exercised
    scanned = make_meta_loss(masked_mse(model.apply), remat=True)
    value, grads = jax.jit(jax.value_and_grad(scanned))(syn, start, target, idx, mask)
    loop_value, loop_grads = jax.jit(jax.value_and_grad(
        lambda s: _loop_meta_loss(model, s, start, target, idx, mask)))(syn)
    np.testing.assert_allclose(value, loop_value, rtol=1e-5)
    for key in syn:
        np.testing.assert_allclose(grads[key], loop_grads[key], rtol=2e-4, atol=1e-7)
    plain = make_meta_loss(masked_mse(model.apply), remat=False)
    np.testing.assert_allclose(jax.jit(jax.grad(plain))(syn, start, target, idx, mask)["images"], grads["images"],
                               rtol=1e-5, atol=1e-8)


def test_truncated_backprop_differentiates_the_last_k_steps_only():
    """backprop_steps=K: the value is the full unroll's; the gradient is the loop's with the
    learnables held constant in the first S - K steps (and differs from the full gradient)."""
    model, start, target, syn, idx, mask = _problem()
    full = make_meta_loss(masked_mse(model.apply))
    truncated = make_meta_loss(masked_mse(model.apply), backprop_steps=1)
    value, grads = jax.jit(jax.value_and_grad(truncated))(syn, start, target, idx, mask)
    loop_value, loop_grads = jax.jit(jax.value_and_grad(
        lambda s: _loop_meta_loss(model, s, start, target, idx, mask, frozen=STEPS - 1)))(syn)
    full_value, full_grads = jax.jit(jax.value_and_grad(full))(syn, start, target, idx, mask)
    np.testing.assert_allclose(value, full_value, rtol=1e-6)
    np.testing.assert_allclose(value, loop_value, rtol=1e-5)
    for key in syn:
        np.testing.assert_allclose(grads[key], loop_grads[key], rtol=2e-4, atol=1e-7)
    assert not np.allclose(grads["images"], full_grads["images"])
    everything = make_meta_loss(masked_mse(model.apply), backprop_steps=STEPS)
    np.testing.assert_allclose(jax.jit(jax.grad(everything))(syn, start, target, idx, mask)["lr"],
                               full_grads["lr"], rtol=1e-6)


def test_augmented_unroll_equals_python_loop_with_the_same_keys():
    from ddjax.mkdt.dsa import DsaParams, dsa_augment

    model, start, target, syn, idx, mask = _problem(seed=2)
    augment = lambda key, x: dsa_augment(key, x, DsaParams(aug_mode="M"), "flip_crop_scale")
    key = jax.random.key(7)
    scanned = make_meta_loss(masked_mse(model.apply), augment=augment)
    value, grads = jax.jit(jax.value_and_grad(scanned))(syn, start, target, idx, mask, key)
    loop_value, loop_grads = jax.jit(jax.value_and_grad(
        lambda s: _loop_meta_loss(model, s, start, target, idx, mask, augment, key)))(syn)
    np.testing.assert_allclose(value, loop_value, rtol=1e-5)
    np.testing.assert_allclose(grads["images"], loop_grads["images"], rtol=2e-4, atol=1e-7)
    plain = jax.jit(make_meta_loss(masked_mse(model.apply)))(syn, start, target, idx, mask)
    assert abs(float(plain) - float(value)) > 1e-6  # the augmentation changed the trajectory


def test_meta_gradient_matches_central_finite_differences():
    with jax.enable_x64(True):
        model, start, target, syn, idx, mask = _problem(jnp.float64, seed=1)
        meta_loss = jax.jit(make_meta_loss(masked_mse(model.apply)))
        grads = jax.grad(meta_loss)(syn, start, target, idx, mask)
        rng = np.random.default_rng(0)
        for key in ("images", "targets", "lr"):
            direction = jnp.asarray(rng.normal(size=np.shape(syn[key])))
            eps = 1e-5
            shifted = lambda sign: meta_loss(dict(syn, **{key: syn[key] + sign * eps * direction}),
                                             start, target, idx, mask)
            numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
            analytic = jnp.sum(grads[key] * direction)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-10)


def test_loss_is_one_without_movement_and_zero_at_the_target():
    model, start, target, syn, idx, mask = _problem()
    meta_loss = make_meta_loss(masked_mse(model.apply))
    assert float(meta_loss(dict(syn, lr=jnp.asarray(0.0)), start, target, idx, mask)) == 1.0
    reached = unroll(masked_mse(model.apply), start, syn["images"], syn["targets"], syn["lr"], idx, mask)
    assert float(meta_loss(syn, start, reached, idx, mask)) == 0.0
    assert float(match_loss(reached, start, reached)) == 0.0


def test_cross_entropy_to_one_hot_equals_hard_label_cross_entropy():
    model, start, _, syn, idx, mask = _problem()
    labels = jnp.asarray([0, 2, 1, 1, 0, 2])
    x = syn["images"][:6]
    logits = model.apply({"params": start}, x)
    hard = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    soft = masked_cross_entropy(model.apply)(start, x, jax.nn.one_hot(labels, 3), jnp.ones(6))
    np.testing.assert_allclose(soft, hard, rtol=1e-6)


def test_outer_optimizer_is_torch_sgd_with_momentum_half():
    opt = outer_optimizer(lr_images=10.0, lr_targets=1.0, lr_lr=1e-2)
    params = {"images": jnp.ones(2), "targets": jnp.ones(2), "lr": jnp.asarray(0.1)}
    g1 = {"images": jnp.asarray([1.0, -2.0]), "targets": jnp.asarray([0.5, 0.5]), "lr": jnp.asarray(3.0)}
    g2 = {"images": jnp.asarray([0.0, 1.0]), "targets": jnp.asarray([1.0, 0.0]), "lr": jnp.asarray(-1.0)}
    state = opt.init(params)
    p = params
    for g in (g1, g2):
        updates, state = opt.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    lrs = {"images": 10.0, "targets": 1.0, "lr": 1e-2}
    for key in params:  # buf1 = g1; buf2 = 0.5 buf1 + g2; p -= lr buf each step
        expected = params[key] - lrs[key] * g1[key] - lrs[key] * (0.5 * g1[key] + g2[key])
        np.testing.assert_allclose(p[key], expected, rtol=1e-6)
    clipped = outer_optimizer(10.0, 1.0, 1e-2, clip_norm=0.5)
    updates, _ = clipped.update(g1, clipped.init(params), params)
    for key in params:  # each learnable's gradient is scaled to norm <= 0.5 before its SGD step
        norm = float(jnp.linalg.norm(jnp.ravel(g1[key])))
        np.testing.assert_allclose(updates[key], -lrs[key] * g1[key] * min(1.0, 0.5 / norm), rtol=1e-6)
    frozen = outer_optimizer(1.0, 0.0, 1.0)
    updates, _ = frozen.update(g1, frozen.init(params), params)
    assert float(jnp.abs(updates["targets"]).max()) == 0.0


def test_several_identical_experts_give_the_single_expert_step():
    model, start, target, syn, idx, mask = _problem()
    opt = outer_optimizer(100.0, 1.0, 1e-4)
    step = make_outer_step(make_meta_loss(masked_mse(model.apply)), opt)
    stack = lambda t, n: jax.tree.map(lambda x: jnp.stack([x] * n), t)
    keys = jax.random.split(jax.random.key(0), 2)
    one = step(syn, opt.init(syn), stack(start, 1), stack(target, 1), idx[None], mask[None], keys[:1])
    two = step(syn, opt.init(syn), stack(start, 2), stack(target, 2), jnp.stack([idx, idx]),
               jnp.stack([mask, mask]), keys)
    np.testing.assert_allclose(one[2], two[2], rtol=1e-6)
    np.testing.assert_allclose(one[0]["images"], two[0]["images"], rtol=1e-4, atol=1e-5)


def test_synthetic_batches_take_the_remainder_first_and_carry_over():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    batches = SyntheticBatches(10, 4)
    idx, mask = batches.next_steps(2, rng_a)
    perm = rng_b.permutation(10)
    # torch.split(perm, 4) = [0:4], [4:8], [8:10]; pop() takes [8:10] first, then [4:8].
    np.testing.assert_array_equal(idx[0, :2], perm[8:10])
    np.testing.assert_array_equal(mask[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(idx[1], perm[4:8])
    idx, mask = batches.next_steps(2, rng_a)  # the leftover chunk, then a fresh permutation
    np.testing.assert_array_equal(idx[0], perm[0:4])
    np.testing.assert_array_equal(idx[1, :2], rng_b.permutation(10)[8:10])
    resumed = SyntheticBatches(10, 4, **batches.state())
    assert resumed.chunks == batches.chunks


def test_expert_cycle_visits_every_expert_once_per_pass():
    rng = np.random.default_rng(0)
    cycle = ExpertCycle([3, 5, 8, 13])
    passes = [[cycle.next(rng) for _ in range(4)] for _ in range(3)]
    assert all(sorted(p) == [3, 5, 8, 13] for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    resumed = ExpertCycle([3, 5, 8, 13], **cycle.state())
    assert resumed.next(np.random.default_rng(1)) == cycle.next(np.random.default_rng(1))
