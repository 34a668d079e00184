"""`ddjax teacher` and `ddjax represent` end to end on the real CIFAR-10 archive (tiny sizes)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from ddjax.cli import main
from ddjax.data import load_arrays
from ddjax.models import build_model
from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.ssl import teacher_stage
from ddjax.artifacts.teacher import TEACHER as TEACHER_ARTIFACT
from ddjax.artifacts.teacher import encoder_digest, write_artifact

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke.py")
# MKDT's CIFAR-10 normalisation (mkdt.md §5.5), written out here rather than read from ddjax.
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
# A tiny teacher: 256 training images in batches of 64 (4 steps per epoch), 2 epochs, a checkpoint
# every 3 steps and at every epoch end (steps 3, 4, 6, 8); k-NN on 500 bank / 500 test images.
TEACHER = ["teacher.model_kwargs.width=8", "teacher.projector_hidden_dims=(32,)",
           "teacher.projector_output_dim=32", "teacher.train_subset=256", "teacher.batch_size=64",
           "teacher.epochs=2", "teacher.checkpoint_every_steps=3", "teacher.knn_bank=500",
           "teacher.knn_test=500"]
WIDTH = 8


def run_cli(command, workdir, data_dir, *overrides):
    args = [command, "--config", SMOKE, "--workdir", str(workdir),
            "--set", f"data.data_dir={data_dir}"]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smoke_pipeline(cifar10_data_dir, tmp_path_factory):
    """The tiny teacher, uninterrupted, then representations of all 50,000 train images."""
    workdir = tmp_path_factory.mktemp("smoke")
    common = ["data.train_subset=0"]
    teacher_args = common + TEACHER
    with pytest.MonkeyPatch.context() as mp:
        outputs = []
        mp.setattr("builtins.print", lambda *a, **k: outputs.append(" ".join(map(str, a))))
        assert run_cli("teacher", workdir, cifar10_data_dir, *teacher_args) == 0
        assert run_cli("represent", workdir, cifar10_data_dir, *common) == 0
    return workdir, [json.loads(line) for line in outputs if line.startswith("{")]


def test_smoke_teacher_and_represent(smoke_pipeline, cifar10_data_dir):
    workdir, (teacher_summary, represent_summary) = smoke_pipeline
    variables, meta = TEACHER_ARTIFACT.read(workdir / "teacher" / "encoder")
    assert teacher_summary["stage"] == "teacher" and teacher_summary["sha256"] == meta["sha256"]
    assert meta["model"] == "convnet_bn" and meta["feature_dim"] == WIDTH * 4 * 4
    assert meta["source"]["kind"] == "trained" and meta["train_examples"] == 256 and meta["steps"] == 8
    assert 0.0 <= meta["knn_accuracy"] <= 1.0 and set(meta["knn_by_epoch"]) == {"0", "1", "2"}
    metrics = [json.loads(line) for line in (workdir / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and "knn_accuracy" in metrics[1]
    assert np.isfinite(metrics[-1]["loss"]) and metrics[1]["lr"] > metrics[2]["lr"] >= 0

    assert set(variables) == {"params", "batch_stats"} and encoder_digest(variables) == meta["sha256"]

    reps, provenance = read_representations(REPRESENTATIONS.locate(workdir))
    assert reps.dtype == np.float32 and reps.shape == (50000, meta["feature_dim"])
    assert represent_summary["n"] == 50000 and represent_summary["teacher_sha256"] == meta["sha256"]
    assert provenance["teacher_sha256"] == meta["sha256"] and provenance["split"] == "train"
    assert np.allclose(provenance["normalisation"]["std"], CIFAR10_STD)

    # Independent recomputation: the network applied directly to a few rows, eval mode.
    images, _ = load_arrays("cifar10", "train", data_dir=cifar10_data_dir)
    rows = np.array([0, 1, 777, 31415, 49999])
    x = (images[rows].astype(np.float32) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
    model = build_model("convnet_bn", num_outputs=0, width=WIDTH, conv_impl="im2col")
    expected = np.asarray(model.apply(variables, x, train=False))
    np.testing.assert_allclose(reps[rows], expected, rtol=1e-4, atol=1e-4)
    assert np.abs(reps[0] - reps[1]).max() > 1e-3  # rows are not all alike


def test_represent_rerun_is_noop_and_refuses_another_teacher(smoke_pipeline, cifar10_data_dir, capsys):
    workdir, (_, first) = smoke_pipeline
    out = workdir / "represent" / "representations"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert run_cli("represent", workdir, cifar10_data_dir, "data.train_subset=0") == 0
    assert last_json(capsys) == first
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before

    # The teacher is replaced in place by a different one: the representations are not overwritten.
    other = workdir.parent / (workdir.name + "_other")
    shutil.copytree(workdir, other)
    teacher_dir = other / "teacher"
    variables, meta = TEACHER_ARTIFACT.read(teacher_dir / "encoder")
    meta = {k: v for k, v in meta.items() if k not in ("artifact", "format")}
    shutil.rmtree(teacher_dir / "encoder")
    variables["params"] = jax.tree.map(lambda a: np.asarray(a) * 1.01, variables["params"])
    write_artifact(teacher_dir, variables, {k: v for k, v in meta.items() if k != "sha256"})
    assert run_cli("represent", other, cifar10_data_dir, "data.train_subset=0") == 2
    err = capsys.readouterr().err
    assert "teacher_sha256" in err and "not overwritten" in err


def test_representations_are_where_experts_read_them(smoke_pipeline, cifar10_data_dir):
    from ddjax.config import load_config
    from ddjax.data.pipeline import dataset_spec
    from ddjax.mkdt import experts_stage, student
    from ddjax.workdir import read_fields

    workdir, _ = smoke_pipeline
    config = read_fields(load_config(SMOKE, ["data.train_subset=0", f"data.data_dir={cifar10_data_dir}"]),
                         experts_stage.READS)
    assert student.representations_dir(config, workdir) == REPRESENTATIONS.locate(workdir)
    written, _ = read_representations(REPRESENTATIONS.locate(workdir))
    loaded = student.load_representations(config, workdir, dataset_spec(config.data), len(written))
    np.testing.assert_array_equal(loaded, written)


class Interrupted(Exception):
    pass


def interrupting_checkpointer(after_saves: int):
    """A RunCheckpointer that dies right after its `after_saves`-th save, like a killed run."""

    class Checkpointer(teacher_stage.RunCheckpointer):
        saves = 0

        def save(self, step, state, meta=None):
            super().save(step, state, meta)
            type(self).saves += 1
            if type(self).saves == after_saves:
                raise Interrupted(step)

    return Checkpointer


def _truncate_newest_checkpoint(resume_dir):
    newest = max((p for p in resume_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    data = max((p for p in (newest / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return int(newest.name)


@pytest.mark.parametrize("saves, damaged", [(1, False), (3, True)])
def test_resumed_teacher_equals_uninterrupted(smoke_pipeline, cifar10_data_dir, tmp_path, monkeypatch,
                                              capsys, saves, damaged):
    """Killed after its first checkpoint (step 3, inside epoch 1) — or after its third (step 6),
    whose data file is then truncated, so the rerun says so in one line and resumes from step 4."""
    straight_dir, (straight, _) = smoke_pipeline
    args = ["data.train_subset=0"] + TEACHER
    monkeypatch.setattr(teacher_stage, "RunCheckpointer", interrupting_checkpointer(saves))
    with pytest.raises(Interrupted, match="6" if damaged else "3"):
        run_cli("teacher", tmp_path, cifar10_data_dir, *args)
    assert not (tmp_path / "teacher" / "encoder").exists()
    monkeypatch.undo()
    if damaged:
        assert _truncate_newest_checkpoint(tmp_path / "teacher" / "resume") == 6
    capsys.readouterr()
    assert run_cli("teacher", tmp_path, cifar10_data_dir, *args) == 0  # the same command resumes
    captured = capsys.readouterr()
    resumed = json.loads(captured.out.strip().splitlines()[-1])
    notices = [line for line in captured.err.splitlines() if line.startswith("ddjax: checkpoint")]
    assert len(notices) == (1 if damaged else 0)
    if damaged:
        assert "checkpoint 6" in notices[0] and "resuming from checkpoint 4" in notices[0]

    assert resumed["sha256"] == straight["sha256"]
    a_vars, meta_a = TEACHER_ARTIFACT.read(straight_dir / "teacher" / "encoder")
    b_vars, meta_b = TEACHER_ARTIFACT.read(tmp_path / "teacher" / "encoder")
    for x, y in zip(jax.tree.leaves(a_vars), jax.tree.leaves(b_vars)):
        np.testing.assert_array_equal(x, y)
    assert meta_a["knn_by_epoch"] == meta_b["knn_by_epoch"]

    def records(workdir):
        return [{k: v for k, v in r.items() if k not in ("time", "train_seconds", "mesh")} for r in
                map(json.loads, (workdir / "teacher" / "metrics.jsonl").read_text().splitlines())]

    # No step twice, and every record (epoch means include the steps before the interruption)
    # equal to the uninterrupted run's.
    assert records(tmp_path) == records(straight_dir)


def test_represent_without_teacher_is_a_clear_error(cifar10_data_dir, tmp_path, capsys):
    assert run_cli("represent", tmp_path, cifar10_data_dir) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddjax: error:") and "teacher" in err and "does not exist" in err
    assert "ddjax teacher" in err
    assert "\n" not in err


def test_unknown_teacher_method_is_a_clear_error(cifar10_data_dir, tmp_path, capsys):
    assert run_cli("teacher", tmp_path, cifar10_data_dir, "teacher.method=byol") == 2
    err = capsys.readouterr().err.strip()
    assert "unknown teacher.method 'byol'" in err and "barlow_twins" in err and "simclr" in err
