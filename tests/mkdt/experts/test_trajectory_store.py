"""The trajectory store: round trip, reading one expert alone, completeness, identity checks."""

import shutil

import numpy as np
import pytest

from ddjax.artifacts.base import MARKER
from ddjax.artifacts.trajectories import EXPERT, TRAJECTORIES, TrajectoryStore
from ddjax.errors import DdjaxError

META = {"dataset": "toy", "model": "convnet", "model_kwargs": {"width": 4}, "loss": "mse",
        "num_params": 7, "normalisation": {"mean": [0.5], "std": [0.2], "zca": None},
        "kept_epochs": [0, 1, 2]}


def _params(expert, epoch):
    rng = np.random.default_rng(100 * expert + epoch)
    return {"conv": {"kernel": rng.normal(size=(2, 2)).astype(np.float32)},
            "head": {"bias": rng.normal(size=(3,)).astype(np.float32)}}


def test_round_trip_partial_read_and_completeness(tmp_path):
    store = TrajectoryStore.create_or_open(tmp_path / "store", META)
    for expert in (0, 1, 2):
        for epoch in range(3):
            store.save_epoch(expert, epoch, _params(expert, epoch))
        if expert != 2:
            store.mark_complete(expert, {"final_loss": 0.5 + expert})
    reopened = TrajectoryStore.open(tmp_path / "store")
    assert TRAJECTORIES.is_complete(tmp_path / "store") and reopened.meta["kept_epochs"] == [0, 1, 2]
    # Expert 2 has every epoch but no marker (a run stopped before declaring it): not complete.
    assert reopened.has_epoch(2, 2) and not (EXPERT.locate(tmp_path / "store", expert=2) / MARKER).exists()
    assert reopened.complete_experts() == [0, 1]
    assert reopened.expert_summary(1)["final_loss"] == 1.5
    # Reading expert 1 needs nothing of the other experts.
    shutil.rmtree(tmp_path / "store" / "expert_0000")
    loaded = reopened.load_epoch(1, 2)
    np.testing.assert_array_equal(loaded["conv"]["kernel"], _params(1, 2)["conv"]["kernel"])
    np.testing.assert_array_equal(loaded["head"]["bias"], _params(1, 2)["head"]["bias"])
    with pytest.raises(DdjaxError, match="no epoch 5 of expert 1"):
        reopened.load_epoch(1, 5)


def test_existing_epoch_is_never_rewritten(tmp_path):
    store = TrajectoryStore.create_or_open(tmp_path / "store", META)
    store.save_epoch(0, 0, _params(0, 0))
    store.save_epoch(0, 0, _params(9, 9))
    np.testing.assert_array_equal(store.load_epoch(0, 0)["head"]["bias"], _params(0, 0)["head"]["bias"])


def test_store_for_another_model_is_refused(tmp_path):
    TrajectoryStore.create_or_open(tmp_path / "store", META)
    other = dict(META, model="resnet18", num_params=9)
    with pytest.raises(DdjaxError, match='model: "convnet" there, "resnet18" here') as err:
        TrajectoryStore.create_or_open(tmp_path / "store", other)
    assert "num_params: 7 there, 9 here" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DdjaxError, match="ssl: null there"):
        TrajectoryStore.open(tmp_path / "store").check_compatible({"ssl": {"lambda": 0.1}})
    with pytest.raises(DdjaxError, match="run `ddjax experts`"):
        TrajectoryStore.open(tmp_path / "nothing")
