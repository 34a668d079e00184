"""``data.stream`` through MKDT's stages: experts, selections, distillation and evaluation read the
train split from the source (a step, a batch or a few rows at a time) and write what the
in-memory path writes (1 device here; 8 devices and 2 processes in tests/test_scaling.py)."""

import jax
import numpy as np
import pytest

from ddjax.data import pipeline
from ddjax.artifacts.results import MKDT_ENCODERS, MKDT_RESULT, read_result
from ddjax.artifacts.selection import SELECTION, read_selection
from ddjax.artifacts.synset import find_synset, read_synset
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore

STREAM = "data.stream=True"
EVAL = ["mkdt_eval.downstream=('toy',)", "mkdt_eval.label_fractions=(0.5,)",
        "mkdt_eval.seeds=(0, 1)", "mkdt_eval.epochs=2", "mkdt_eval.batch_size=8", "mkdt_eval.probe_steps=3",
        "mkdt_eval.feature_batch=8", "mkdt_eval.rows=('high_loss', 'full', 'mkdt')"]
STAGES = (["experts"], ["select", "high-loss"], ["select", "random"], ["distill", "mkdt"],
          ["eval", "mkdt"])


def _close(a, b, what, rtol=1e-4):
    """Per artifact: ||a - b|| / ||a|| <= rtol (docs/scaling.md's tolerance for training)."""
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (what, jax.tree_util.keystr(path))
        scale = max(np.linalg.norm(x), 1e-12)
        assert np.linalg.norm(x - y) / scale <= rtol, (what, jax.tree_util.keystr(path))


def _never_whole(*args, **kwargs):
    raise AssertionError("a streamed stage loaded a split whole")


def test_mkdt_stages_streamed_write_what_they_write_in_memory(toy_pipeline, tmp_path, monkeypatch):
    toy = toy_pipeline
    runs = {"memory": tmp_path / "memory", "stream": tmp_path / "stream"}
    for name, workdir in runs.items():
        toy.write_reps(workdir)
        if name == "stream":
            monkeypatch.setattr(pipeline, "load_arrays", _never_whole)
        for command in STAGES:
            extra = EVAL + ([STREAM] if name == "stream" else [])
            code, _, err = toy.cli(command, workdir, extra)
            assert code == 0, f"{name} {command}: {err}"
    memory, stream = runs["memory"], runs["stream"]

    stores = [TrajectoryStore.open(TRAJECTORIES.locate(w)) for w in (memory, stream)]
    assert stores[0].complete_experts() == stores[1].complete_experts() == [0, 1, 2]
    for e in range(3):
        for t in stores[0].meta["kept_epochs"]:
            _close(stores[0].load_epoch(e, t), stores[1].load_epoch(e, t), f"expert {e} epoch {t}")
        assert stores[1].expert_summary(e)["final_loss"] == pytest.approx(
            stores[0].expert_summary(e)["final_loss"], rel=1e-5)

    for method in ("high_loss", "random"):
        for percent in (10, 50):
            a, b = (read_selection(SELECTION.locate(w, method=method, percent=percent))
                    for w in (memory, stream))
            np.testing.assert_array_equal(b[0], a[0])

    a, b = (read_synset(find_synset(w, -1))[0] for w in (memory, stream))
    _close(a, b, "distilled set")

    for row in ("high_loss", "full", "mkdt"):
        a, b = (MKDT_ENCODERS.read(MKDT_ENCODERS.locate(w, row=row))[0] for w in (memory, stream))
        _close(a, b, f"{row} encoders")
        a, b = (read_result(MKDT_RESULT, MKDT_RESULT.locate(w, row=row, dataset="toy"))
                for w in (memory, stream))
        assert b["accuracy"] == a["accuracy"] and b["num_test"] == a["num_test"]
        assert b["probe_loss"]["0.5"] == pytest.approx(a["probe_loss"]["0.5"], rel=1e-4)
