"""``data.stream``: the teacher and the representations read their batches from the source instead
of loading the split, and compute what the in-memory path computes (1 device here; 8 devices and 2
processes in tests/test_scaling.py)."""

import json
import shutil

import jax
import numpy as np
import pytest

from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.artifacts.teacher import TEACHER as TEACHER_ARTIFACT
from ddjax.ssl import teacher_stage

# The toy's 36 train images, 32 of them kept: 2 steps of 16 per epoch, 2 epochs, a checkpoint
# after every step (steps 1 and 3 inside an epoch), the k-NN monitor after every epoch.
TEACHER = ["data.train_subset=32", "teacher.batch_size=16", "teacher.model_kwargs.width=4",
           "teacher.projector_hidden_dims=(16,)", "teacher.projector_output_dim=16",
           "teacher.epochs=2", "teacher.knn_every=1", "teacher.checkpoint_every_steps=1"]
STREAM = "data.stream=True"


class Interrupted(Exception):
    pass


class StopAfterFirstSave(teacher_stage.RunCheckpointer):
    """Dies right after its first checkpoint (step 1, inside epoch 1), like a killed run."""

    def save(self, step, state, meta=None):
        super().save(step, state, meta)
        raise Interrupted(step)


def _teacher(workdir):
    variables, meta = TEACHER_ARTIFACT.read(workdir / "teacher" / "encoder")
    records = [{k: v for k, v in r.items() if k not in ("time", "train_seconds", "mesh")}
               for r in map(json.loads, (workdir / "teacher" / "metrics.jsonl").read_text()
                            .splitlines())]
    return variables, meta, records


def _assert_same_teacher(a_dir, b_dir):
    a_vars, a_meta, a_records = _teacher(a_dir)
    b_vars, b_meta, b_records = _teacher(b_dir)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a_vars), jax.tree.leaves(b_vars)):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    assert a_meta["knn_by_epoch"] == b_meta["knn_by_epoch"]
    assert a_meta["train_examples"] == b_meta["train_examples"] == 32
    assert [r["step"] for r in a_records] == [r["step"] for r in b_records] == [0, 2, 4]
    for a, b in zip(a_records, b_records):
        numbers = {k for k, v in a.items() if isinstance(v, float)}
        assert b.keys() == a.keys() and "knn_accuracy" in numbers
        assert {k: b[k] for k in numbers} == pytest.approx({k: a[k] for k in numbers}, rel=1e-6)
        assert {k: b[k] for k in a.keys() - numbers} == {k: a[k] for k in a.keys() - numbers}


def test_streamed_teacher_equals_in_memory_and_resumes_it(toy_pipeline, tmp_path, monkeypatch):
    toy = toy_pipeline
    memory, streamed, resumed = tmp_path / "memory", tmp_path / "streamed", tmp_path / "resumed"
    for workdir, extra in ((memory, []), (streamed, [STREAM])):
        code, _, err = toy.cli(["teacher"], workdir, [*TEACHER, *extra])
        assert code == 0, err
    _assert_same_teacher(memory, streamed)

    # Started in memory, killed inside its first epoch, resumed reading from the source: the
    # recorded settings do not include data.stream, and the resumed run is the straight one.
    monkeypatch.setattr(teacher_stage, "RunCheckpointer", StopAfterFirstSave)
    with pytest.raises(Interrupted):
        toy.cli(["teacher"], resumed, TEACHER)
    monkeypatch.undo()
    assert not TEACHER_ARTIFACT.is_complete(resumed / "teacher" / "encoder")
    code, _, err = toy.cli(["teacher"], resumed, [*TEACHER, STREAM])
    assert code == 0, err
    _assert_same_teacher(memory, resumed)
    assert "stream" not in json.loads((resumed / "teacher" / "config.json").read_text())["data"]


def test_streamed_representations_equal_in_memory(toy_pipeline, tmp_path):
    """``ddjax represent`` with ``data.stream`` encodes the split batch by batch from the source
    (batches of 12, the last one padded) and writes what it writes from the split in memory."""
    toy, memory, streamed = toy_pipeline, tmp_path / "memory", tmp_path / "streamed"
    for command in (["teacher"], ["represent"]):
        code, _, err = toy.cli(command, memory, [*TEACHER, "represent.batch_size=12"])
        assert code == 0, err
    shutil.copytree(memory / "teacher", streamed / "teacher")
    code, _, err = toy.cli(["represent"], streamed, [*TEACHER, "represent.batch_size=12", STREAM])
    assert code == 0, err
    expected, _ = read_representations(REPRESENTATIONS.locate(memory))
    reps, _ = read_representations(REPRESENTATIONS.locate(streamed))
    assert reps.shape == expected.shape == (32, expected.shape[1])
    np.testing.assert_allclose(reps, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(reps[0] - reps[1]).max() > 1e-4  # rows are not all alike
