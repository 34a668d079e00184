"""The naive MTT-SSL baseline (``distill.mode = 'mtt_ssl'``): Barlow Twins inner loss on two DSA
views of each padded synthetic minibatch, its exact meta-gradient, and the stages end to end with
their mode/store checks."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.mkdt.dsa import DsaParams, dsa_augment
from ddjax.mkdt.mtt import make_meta_loss, masked_barlow_twins
from ddjax.mkdt.sampling import SyntheticBatches
from ddjax.artifacts.base import META
from ddjax.artifacts.results import MKDT_ENCODERS
from ddjax.artifacts.selection import SELECTION, read_selection
from ddjax.artifacts.synset import SYNSET, read_synset
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.mkdt.experts import two_views
from ddjax.models import build_model
from ddjax.models.registry import dummy_input
from ddjax.ssl.losses import barlow_twins_loss

STEPS, BATCH, N_SYN, DIM = 3, 6, 10, 4


def _problem(dtype=jnp.float32, seed=0):
    model = build_model("convnet", num_outputs=DIM, width=4, depth=1, image_size=(8, 8))

    @jax.jit
    def expert_pair(key):  # θ_s and a nearby θ*, built in one compiled call (eager is slow)
        k_init, k_noise = jax.random.split(key)
        start = model.init(k_init, dummy_input((8, 8)))["params"]
        leaves, tree = jax.tree.flatten(start)
        noise = [jax.random.normal(k, x.shape) for k, x in zip(jax.random.split(k_noise, len(leaves)), leaves)]
        target = jax.tree.unflatten(tree, [x + 0.05 * n for x, n in zip(leaves, noise)])
        return jax.tree.map(lambda x: x.astype(dtype), (start, target))

    start, target = expert_pair(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    syn = {"images": jnp.asarray(rng.normal(size=(N_SYN, 8, 8, 3)), dtype),
           "lr": jnp.asarray(0.1, dtype)}  # no targets
    idx, mask = SyntheticBatches(N_SYN, BATCH).next_steps(STEPS, np.random.default_rng(seed))
    return model, start, target, syn, jnp.asarray(idx), jnp.asarray(mask, dtype), jax.random.key(seed + 100)


VIEWS = two_views(lambda key, x: dsa_augment(key, x, DsaParams(aug_mode="M"), "flip_crop_scale"))


def test_masked_barlow_twins_ignores_padded_members():
    linear = lambda variables, x: x.reshape(x.shape[0], -1) @ variables["params"]["w"]
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(8 * 8 * 3, DIM)), jnp.float32)}
    views = jnp.asarray(rng.normal(size=(2, 5, 8, 8, 3)), jnp.float32)
    loss = masked_barlow_twins(linear, 0.1)
    z = [linear({"params": params}, v) for v in views]
    padded = loss(params, views, None, jnp.asarray([1.0, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(padded, barlow_twins_loss(z[0][:3], z[1][:3], 0.1), rtol=1e-5)
    np.testing.assert_allclose(loss(params, views, None, jnp.ones(5)), barlow_twins_loss(*z, 0.1), rtol=1e-5)


def test_unroll_at_lr_zero_and_meta_gradient_through_the_views():
    """lr 0 leaves the student at θ_s (loss exactly 1); the meta-gradient with respect to pixels
    and the lr, through the two DSA views and padded Barlow Twins batches, matches central
    finite differences in float64."""
    with jax.enable_x64(True):
        model, start, target, syn, idx, mask, key = _problem(jnp.float64, seed=1)
        assert float(mask.sum()) < idx.size  # the remainder chunk is padded
        value_and_grad = jax.jit(jax.value_and_grad(
            make_meta_loss(masked_barlow_twins(model.apply, 0.05), augment=VIEWS)))
        meta_loss = lambda s: float(value_and_grad(s, start, target, idx, mask, key)[0])
        assert meta_loss(dict(syn, lr=syn["lr"] * 0)) == 1.0
        value, grads = value_and_grad(syn, start, target, idx, mask, key)
        assert float(value) != 1.0 and set(grads) == {"images", "lr"}
        eps = 1e-5
        for pixel in [(int(idx[0, 0]), 3, 4, 0), (int(idx[1, 2]), 6, 1, 2)]:
            bump = np.zeros(syn["images"].shape)
            bump[pixel] = eps
            numeric = (meta_loss(dict(syn, images=syn["images"] + bump))
                       - meta_loss(dict(syn, images=syn["images"] - bump))) / (2 * eps)
            assert abs(numeric) > 1e-6  # the pixel matters
            np.testing.assert_allclose(grads["images"][pixel], numeric, rtol=1e-5)
        eps = 1e-6
        numeric = (meta_loss(dict(syn, lr=syn["lr"] + eps)) - meta_loss(dict(syn, lr=syn["lr"] - eps))) / (2 * eps)
        np.testing.assert_allclose(grads["lr"], numeric, rtol=1e-5)


# Two experts in one program, whole batches, two epochs: one compiled expert epoch, kept small.
# A depth-1 student (fast to compile) at a small inner lr: its Barlow Twins inner loss is too sharp
# for the default lr_init 0.1 (lr*lambda_max ~ 3e4), and the run would stop at its divergence guards.
SSL = ["experts.loss=barlow_twins", "experts.ssl_output_dim=8", "experts.dsa_strategy=flip_crop",
       "experts.num_experts=2", "experts.batch_size=12", "experts.epochs=2",
       "distill.mode=mtt_ssl", "distill.init=random", "distill.iterations=2",
       "model.name=convnet_d1", "distill.lr_init=1e-5"]


def test_barlow_twins_experts_then_mtt_ssl_distillation(toy_pipeline, tmp_path):
    toy, work = toy_pipeline, tmp_path / "ssl"
    code, out, err = toy.cli(["experts"], work, SSL)  # no teacher representations needed
    assert code == 0, err
    store = TrajectoryStore.open(TRAJECTORIES.locate(work))
    assert store.meta["loss"] == "barlow_twins" and store.meta["num_outputs"] == 8
    assert store.meta["ssl"] == {"method": "barlow_twins", "lambda": 0.0051, "views": "dsa",
                                 "dsa_strategy": "flip_crop", "dsa_mode": "M"}
    w0, w1 = (jax.tree.leaves(store.load_epoch(0, t))[0] for t in (0, 1))
    assert np.isfinite(toy.summary(out)["final_loss_mean"]) and not np.allclose(w0, w1)
    code, _, err = toy.cli(["select", "high-loss"], work, SSL)
    assert code == 2 and "holds 'barlow_twins' experts" in err
    assert toy.cli(["select", "random"], work, SSL)[0] == 0

    code, out, err = toy.cli(["distill", "mkdt"], work, SSL)
    assert code == 0, err
    summary = toy.summary(out)
    assert summary["mode"] == "mtt_ssl" and summary["iterations"] == 2 and summary["num_syn"] == 18
    first, _ = read_synset(SYNSET.locate(work, iteration=0))
    last, meta = read_synset(SYNSET.locate(work, iteration=2))
    assert meta["mode"] == "mtt_ssl" and meta["ssl"] == store.meta["ssl"]
    assert not np.allclose(first["images"], last["images"]) and float(last["lr"]) != pytest.approx(1e-5)
    # No learned targets: the saved set keeps the labels of the real images it started from.
    indices, _ = read_selection(SELECTION.locate(work, method="random", percent=50))
    assert meta["init_indices"] == indices.tolist() and last["targets"].shape == (18,)
    lines = [json.loads(x) for x in (work / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(x["loss"]) and x["image_change"] > 0 for x in lines)

    # The set evaluates by pre-training with its experts' Barlow Twins at its learned lr; the KD
    # baselines have no teacher representations here and are refused with the reason.
    evaluate = SSL + ["mkdt_eval.downstream=('toy',)", "mkdt_eval.label_fractions=(0.5,)",
                      "mkdt_eval.seeds=(0, 1)", "mkdt_eval.epochs=1", "mkdt_eval.batch_size=12",
                      "mkdt_eval.probe_steps=2", "mkdt_eval.feature_batch=8"]
    code, _, err = toy.cli(["eval", "mkdt"], work, evaluate + ["mkdt_eval.rows=('mkdt',)"])
    assert code == 0, err
    record = MKDT_ENCODERS.read_meta(MKDT_ENCODERS.locate(work, row="mkdt"))["pretraining"]
    assert record["objective"] == "barlow_twins" and record["lr"] == pytest.approx(float(last["lr"]))
    assert np.isfinite(record["final_loss"]).all()
    shutil.copytree(work / "select", tmp_path / "ssl_random" / "select")  # a subset, no teacher
    code, _, err = toy.cli(["eval", "mkdt"], tmp_path / "ssl_random", evaluate + ["mkdt_eval.rows=('random',)"])
    assert code == 2 and "pre-trains by KD" in err.strip().splitlines()[-1]

    # Modes and stores must agree, both ways, as one-line errors naming the mode and the loss.
    def distill_copy(name, overrides, store_meta=None):
        for part in ("experts", "select"):
            shutil.copytree(work / part, tmp_path / name / part)
        if store_meta is not None:
            (TRAJECTORIES.locate(tmp_path / name) / META).write_text(json.dumps(store_meta))
        code, _, err = toy.cli(["distill", "mkdt"], tmp_path / name, overrides)
        assert code == 2
        return err.strip().splitlines()[-1]

    for mode in ("mkdt", "mtt"):
        err = distill_copy(f"as_{mode}", [f"distill.mode={mode}", "distill.init=random"])
        assert f"distill.mode={mode!r} matches experts trained with" in err and "'barlow_twins' experts" in err
    err = distill_copy("kd_store", SSL, dict(store.meta, loss="mse", ssl=None))
    assert "distill.mode='mtt_ssl' matches experts trained with experts.loss='barlow_twins'" in err
    err = distill_copy("other_lambda", SSL + ["experts.ssl_lambda=0.1"])
    assert "made differently" in err and "ssl:" in err


def test_rejected_ssl_settings_are_one_line_errors(toy_pipeline, tmp_path):
    toy = toy_pipeline
    code, _, err = toy.cli(["distill", "mkdt"], tmp_path / "a", SSL + ["distill.dsa=True"])
    assert code == 2 and "leave distill.dsa False" in err and not (tmp_path / "a" / "distill").exists()
    code, _, err = toy.cli(["experts"], tmp_path / "b", SSL + ["experts.dsa=True"])
    assert code == 2 and "leave experts.dsa False" in err
    code, _, err = toy.cli(["experts"], tmp_path / "c", SSL + ["experts.ssl_dsa_mode=X"])
    assert code == 2 and "experts.ssl_dsa_mode" in err
