"""`ddjax distill lgm` and `ddjax eval lgm` end to end on a tiny archive with tiny backbones:
resume equals an uninterrupted run (metrics without duplicates), a partial set is redone, the
evaluation fills the A x B matrix with the baselines' right picks and is not blocked by
distillation-only settings, sets made differently and bad inputs are one-line errors."""

import json
import jax
import numpy as np
import pytest

import ddjax.lgm.distill_stage as lgm_stage
import ddjax.lgm.eval_stage as eval_stage
from lgm_helpers import LGM_SMOKE, tiny_backbone
from ddjax.cli import main
from ddjax.data import class_balanced_subset, load_arrays
from ddjax.artifacts.base import MARKER
from ddjax.artifacts.image_set import BASELINE_SET, LGM_SET, read_image_set, write_image_set


@pytest.fixture
def toy(make_archive, tmp_path):
    """A 3-class 16x16 archive (12 train, 4 test images per class) and its overrides."""
    archive = make_archive(name="toy", counts={"train": 12, "test": 4}, sizes=[(16, 16)])
    overrides = ["data.name=toy", f"data.archive={archive.root}",
                 f"data.data_dir={tmp_path / 'tfds'}", "data.train_subset=0",
                 "lgm.backbones=('tiny=lgmtest:0',)", "lgm.iterations=6",
                 "lgm.augs_per_batch=2", "lgm.pyramid_extent_it=2", "lgm.checkpoint_every=2",
                 "lgm.log_every=1", "lgm.image_log_every=3"]
    return overrides, tmp_path / "tfds"


def _cli(command, workdir, overrides, capsys):
    args = command + ["--config", LGM_SMOKE, "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    code = main(args)
    return code, capsys.readouterr()


def _metrics(workdir):
    lines = (workdir / "lgm" / "metrics.jsonl").read_text().splitlines()
    return [(r["backbone"], r["step"], r["loss"], r["loss_mean"], r["levels"])
            for r in map(json.loads, lines)]


def test_resumed_distillation_equals_an_uninterrupted_run(toy, tmp_path, capsys, monkeypatch):
    overrides, _ = toy
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, out = _cli(["distill", "lgm"], straight, overrides, capsys)
    assert code == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["updates"] == 7 and summary["last_step"] == 6     # steps 0..6
    assert np.isfinite(summary["final_loss"]["tiny"])

    real = lgm_stage.make_train_step

    def failing_factory(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            # step 5: after step 4's metrics record, whose checkpoint (6) is not written yet, and
            # after step 5's new level, which the rerun adds again
            if len(calls) == 6:
                raise KeyboardInterrupt("simulated kill")
            return step(*a)

        return wrapped

    monkeypatch.setattr(lgm_stage, "make_train_step", failing_factory)
    with pytest.raises(KeyboardInterrupt):
        _cli(["distill", "lgm"], resumed, overrides, capsys)
    assert [m[1] for m in _metrics(resumed)] == [0, 1, 2, 3, 4]
    monkeypatch.setattr(lgm_stage, "make_train_step", real)
    code, out = _cli(["distill", "lgm"], resumed, overrides, capsys)
    assert code == 0, out.err
    a_dir, b_dir = (LGM_SET.locate(w, tag="tiny") for w in (straight, resumed))
    a_images, a_labels, a_meta = read_image_set(LGM_SET, a_dir)
    b_images, b_labels, b_meta = read_image_set(LGM_SET, b_dir)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, [0, 1, 2])
    assert a_meta["final_loss"] == b_meta["final_loss"] and a_images.shape == (3, 16, 16, 3)
    assert _metrics(resumed) == _metrics(straight)                   # each (backbone, step) once
    assert [m[4] for m in _metrics(straight)] == [1, 1, 1, 2, 2, 3, 3]   # levels added at 3 and 5
    assert (a_dir / "grid.png").exists() and len(list((a_dir / "images").glob("*.png"))) == 3
    snapshots = sorted(p.name for p in (straight / "lgm" / "tiny" / "snapshots").glob("*.png"))
    assert snapshots == ["step_000000.png", "step_000003.png", "step_000006.png"]

    # A set a killed writer left without its marker (and a stale .partial) is redone by a rerun,
    # from the last checkpoint, equal to the first.
    (b_dir / MARKER).unlink()
    partial = b_dir.with_name(b_dir.name + ".partial")
    partial.mkdir()
    (partial / "junk").write_text("left by a killed writer")
    code, out = _cli(["distill", "lgm"], resumed, overrides, capsys)
    assert code == 0, out.err
    assert LGM_SET.is_complete(b_dir) and not partial.exists()
    np.testing.assert_array_equal(read_image_set(LGM_SET, b_dir)[0], a_images)
    assert _metrics(resumed) == _metrics(straight)


@pytest.mark.parametrize("override,message", [
    ("lgm.ipc=0", "lgm.ipc must be >= 1"),
    ("lgm.backbones=('nosuchnet',)", "unknown backbone 'nosuchnet'"),
    ("lgm.backbones=('liar=lgmtest:0:16:99',)", "declares feature_dim 99"),
])
def test_bad_inputs_are_one_line_errors(toy, tmp_path, capsys, override, message):
    overrides, _ = toy
    code, out = _cli(["distill", "lgm"], tmp_path / "bad", overrides + [override], capsys)
    err = out.err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ddjax: error:") and message in err[-1], out.err
    if "ipc" in override:   # refused before anything is recorded
        assert not (tmp_path / "bad" / "lgm" / "config.json").exists()


def _fake_distilled_set(workdir, tag, seed, backbone=None):
    images = np.random.default_rng(seed).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    write_image_set(LGM_SET, LGM_SET.locate(workdir, tag=tag), images, np.arange(3),
                    {"method": "lgm", "tag": tag, "dataset": "toy", "ipc": 1, "syn_res": 16,
                     "backbone": backbone or f"lgmtest:{seed}", "feature_dim": 32})
    return images


def test_eval_fills_the_cross_model_matrix_with_the_baselines(toy, tmp_path, capsys, monkeypatch):
    overrides, data_dir = toy
    overrides = overrides + ["lgm.backbones=('a=lgmtest:0', 'b=lgmtest:1')", "lgm_eval.seeds=2",
                             "lgm_eval.epochs=3", "lgm_eval.random_seeds=(0, 1)",
                             "lgm_eval.full_epochs=1", "lgm_eval.full_seeds=2",
                             "lgm_eval.alignment_images=12", "lgm_eval.alignment_k=3",
                             "lgm_eval.test_subset=0"]
    workdir = tmp_path / "eval"
    distilled = {tag: _fake_distilled_set(workdir, tag, seed) for tag, seed in (("a", 0), ("b", 1))}
    # Streamed: the embeddings behind the picks checked below are of rows read from the source.
    code, out = _cli(["eval", "lgm"], workdir, overrides + ["data.stream=True"], capsys)
    assert code == 0, out.err
    report = json.loads((workdir / "lgm_eval" / "results.json").read_text())
    for group in ("lgm", "centroids", "neighbors"):
        matrix = {a: sorted(row) for a, row in report["cross"][group].items()}
        assert matrix == {"a": ["a", "b"], "b": ["a", "b"]}
    assert sorted(report["main"]) == ["centroids", "full", "lgm", "neighbors", "random"]
    assert report["main"]["random"]["a"]["n"] == 2 and "top5_mean" not in report["main"]["lgm"]["a"]
    assert [(p["source"], p["target"]) for p in report["pairs"]] == [("a", "b"), ("b", "a")]
    assert report["correlation"]["top1"] is None                        # fewer than 3 pairs
    assert report["alignment"]["matrix"]["a"]["a"] == 1.0
    assert "Mutual 3-NN alignment" in out.out

    train_images, train_labels = load_arrays("toy", "train", data_dir=data_dir)
    embed = jax.jit(tiny_backbone(seed=0).embed)
    features = np.asarray(embed(train_images.astype(np.float32) / 255.0))
    members = [np.flatnonzero(train_labels == c) for c in range(3)]
    expect_centroids = [m[np.argmin(np.linalg.norm(features[m] - features[m].mean(0), axis=1))]
                        for m in members]
    meta = read_image_set(BASELINE_SET, BASELINE_SET.locate(workdir, name="centroids_a"))[2]
    assert meta["train_indices"] == [int(i) for i in expect_centroids]
    query = np.asarray(embed(distilled["a"]))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    expect_neighbors = [m[np.argmax(unit[m] @ query[c])] for c, m in enumerate(members)]
    def baseline(name):
        return read_image_set(BASELINE_SET, BASELINE_SET.locate(workdir, name=name))

    assert baseline("neighbors_a")[2]["train_indices"] == [int(i) for i in expect_neighbors]
    assert baseline("random_1")[2]["train_indices"] == \
        class_balanced_subset(train_labels, 1, 1).tolist()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished evaluation was trained again")

    monkeypatch.setattr(eval_stage, "train_probes", no_training)
    # distillation-only settings are neither recorded nor checked by the evaluation
    recorded = json.loads((workdir / "lgm_eval" / "config.json").read_text())
    assert recorded["lgm"] == {"backbones": ["a=lgmtest:0", "b=lgmtest:1"], "ipc": 1}
    code, out = _cli(["eval", "lgm"], workdir,
                     overrides + ["lgm.iterations=99", "lgm.lr=0.5", "seed=7"], capsys)
    assert code == 0, out.err
    assert json.loads((workdir / "lgm_eval" / "results.json").read_text()) == report


@pytest.mark.parametrize("override,message", [
    ("lgm.backbones=('a=lgmtest:5',)", 'backbone: "lgmtest:0" there, "lgmtest:5" here'),
    ("lgm.ipc=2", "ipc: 1 there, 2 here"),
])
def test_eval_refuses_a_set_made_differently(toy, tmp_path, capsys, override, message):
    overrides, _ = toy
    _fake_distilled_set(tmp_path, "a", 0)
    code, out = _cli(["eval", "lgm"], tmp_path, overrides + ["lgm.backbones=('a=lgmtest:0',)",
                                                            override], capsys)
    err = out.err.strip().splitlines()[-1]
    assert code == 2 and out.err.count("ddjax: error:") == 1, out.err
    assert err.startswith("ddjax: error: the LGM image set at") and "made differently" in err
    assert message in err, out.err
    assert not (tmp_path / "lgm_eval" / "results").exists()


def test_smoke_config_runs_on_cifar10(cifar10_data_dir, tmp_path, capsys):
    overrides = [f"data.data_dir={cifar10_data_dir}", "data.train_subset=300",
                 "lgm.backbones=('tiny=lgmtest:0:32',)", "lgm.iterations=3",
                 "lgm.image_log_every=0",
                 "lgm_eval.epochs=2", "lgm_eval.test_subset=100", "lgm_eval.alignment_images=50",
                 "lgm_eval.seeds=1", "lgm_eval.random_seeds=(0,)", "lgm_eval.baselines=('random',)"]
    code, out = _cli(["distill", "lgm"], tmp_path, overrides, capsys)
    assert code == 0, out.err
    code, out = _cli(["eval", "lgm"], tmp_path, overrides, capsys)
    assert code == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert 0.0 <= summary["lgm_top1"]["tiny"] <= 100.0
    images, labels, meta = read_image_set(LGM_SET, LGM_SET.locate(tmp_path, tag="tiny"))
    assert images.shape == (10, 32, 32, 3) and meta["dataset"] == "cifar10"
    assert meta["class_names"][0] == "airplane"
