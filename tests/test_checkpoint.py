"""Orbax run state: round trips, retention, and resume equal to an uninterrupted run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.checkpoint import (RunCheckpointer, load_pytree, numpy_rng_from_state, numpy_rng_state,
                              save_pytree)
from ddjax.errors import DdjaxError


def _state(seed):
    return {
        "params": {"w": jnp.arange(6.0).reshape(2, 3) + seed, "b": jnp.zeros(3)},
        "key": jax.random.key(seed),
        "legacy_key": jax.random.PRNGKey(seed),
        "count": np.int32(seed),
    }


def test_round_trip_restores_arrays_keys_and_meta(tmp_path):
    rng = np.random.default_rng(7)
    rng.random(5)
    state = _state(3)
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save(10, state, {"position": 123, "rng": numpy_rng_state(rng)})
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        restored, meta = checkpointer.restore(_state(0))
    chex.assert_trees_all_equal(restored["params"], state["params"])
    assert jax.random.uniform(restored["key"]) == jax.random.uniform(state["key"])
    np.testing.assert_array_equal(restored["legacy_key"], state["legacy_key"])
    assert int(restored["count"]) == 3 and meta["position"] == 123
    assert numpy_rng_from_state(meta["rng"]).random() == rng.random()


def test_keeps_only_the_newest(tmp_path):
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        for step in range(5):
            checkpointer.save(step, _state(step))
        assert checkpointer.all_steps() == [3, 4]
        restored, _ = checkpointer.restore(_state(0))
    assert int(restored["count"]) == 4


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    with RunCheckpointer(tmp_path / "empty") as checkpointer:
        with pytest.raises(DdjaxError, match="no checkpoint"):
            checkpointer.restore(_state(0))


def _noisy_descent(state, meta, steps, checkpointer=None):
    """A toy run mixing a JAX key, a numpy generator and a data position."""
    rng = numpy_rng_from_state(meta["rng"])
    for step in range(meta["step"], meta["step"] + steps):
        key, sub = jax.random.split(state["key"])
        noise = jax.random.normal(sub, state["w"].shape)
        batch = rng.integers(0, 100, size=3)
        state = {"w": state["w"] * 0.9 + noise + batch.sum(), "key": key}
        meta = {"step": step + 1, "rng": numpy_rng_state(rng)}
        if checkpointer is not None:
            checkpointer.save(step + 1, state, meta)
    return state, meta


def test_resume_equals_uninterrupted(tmp_path):
    start = ({"w": jnp.ones(4), "key": jax.random.key(0)},
             {"step": 0, "rng": numpy_rng_state(np.random.default_rng(1))})
    straight, _ = _noisy_descent(*start, steps=6)
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        _noisy_descent(*start, steps=3, checkpointer=checkpointer)
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        state, meta = checkpointer.restore(start[0])
        assert meta["step"] == 3
        resumed, _ = _noisy_descent(state, meta, steps=3, checkpointer=checkpointer)
    np.testing.assert_array_equal(resumed["w"], straight["w"])


def test_pytree_artifact_round_trip_and_no_overwrite(tmp_path):
    tree = {"reps": np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), "n": np.int64(5)}
    path = save_pytree(tmp_path / "artifact", tree)
    loaded = load_pytree(path)
    np.testing.assert_array_equal(loaded["reps"], tree["reps"])
    with pytest.raises(DdjaxError, match="already exists"):
        save_pytree(path, {"reps": np.zeros(1)})
    np.testing.assert_array_equal(load_pytree(path, tree)["reps"], tree["reps"])
    with pytest.raises(DdjaxError, match="does not exist"):
        load_pytree(tmp_path / "missing")


def _big_state(seed):
    return {"w": jnp.arange(1000.0) + seed, "count": np.int32(seed)}


def _truncate_a_data_file(step_dir):
    """Halve the largest data file: the one holding the 1000-float array."""
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("damage", [_truncate_a_data_file, _delete_metadata])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    directory = tmp_path / "ckpt"
    with RunCheckpointer(directory) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, _big_state(step), {"step": step})
    damage(directory / "2")
    with RunCheckpointer(directory) as checkpointer:
        restored, meta = checkpointer.restore_latest(_big_state(0))
        assert meta == {"step": 1} and int(restored["count"]) == 1
        np.testing.assert_array_equal(restored["w"], np.arange(1000.0) + 1)
        assert checkpointer.all_steps() == [1]
        checkpointer.save(2, _big_state(2), {"step": 2})  # the run goes on and writes step 2 again
        assert checkpointer.restore_latest(_big_state(0))[1] == {"step": 2}
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "checkpoint 2" in lines[0] and "resuming from checkpoint 1" in lines[0]
    kept = list((tmp_path / "ckpt.unreadable").iterdir())  # the damaged one is kept, not deleted
    assert len(kept) == 1 and kept[0].name.startswith("2-")


def test_restore_latest_without_any_readable_checkpoint_starts_over(tmp_path, capsys):
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        assert checkpointer.restore_latest(_state(0)) is None
        checkpointer.save(1, _state(1))
    _delete_metadata(tmp_path / "ckpt" / "1")
    with RunCheckpointer(tmp_path / "ckpt") as checkpointer:
        assert checkpointer.restore_latest(_state(0)) is None
    assert "starting from the beginning" in capsys.readouterr().err


def test_fewer_than_two_kept_checkpoints_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        RunCheckpointer(tmp_path / "ckpt", max_to_keep=1)
