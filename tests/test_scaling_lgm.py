"""Scale-out of `ddjax distill lgm` on CPU: on 8 virtual devices and on 2 localhost processes x 4
devices (jax.distributed), reading the real batches per process from the data source, the stage
writes the set the 1-device in-memory run writes, names its layout in
the summary and writes its metrics once; a non-finite loss, read back only when the stage logs,
stops the run before anything of that step or later is written.

The backbone is a tiny random ConvNet written as a ``ddjax teacher`` artifact, so the stage's own
subprocesses load it by path. Sizes split over 8 devices: ipc 2 x 3 classes x 4 augmentations =
24 real rows and 24 synthetic views per step.

Tolerance: the sharded runs sum the probe gradients over rows in another order, so the sets agree
to ||a - b|| / ||a|| <= 1e-4, not bit for bit (docs/scaling.md)."""

import json

import jax
import numpy as np
import pytest

import ddjax.lgm.distill_stage as lgm_stage
from ddjax.artifacts.image_set import LGM_SET, read_image_set
from ddjax.artifacts.teacher import write_artifact
from ddjax.cli import main
from ddjax.data import load_arrays
from ddjax.models import build_model, init_params
from scaling_helpers import REPO, finish, relative_error, run_python, stage_args, start

TOLERANCE = 1e-4
CONFIG = str(REPO / "experiments" / "smoke.py") + ":lgm"
SIZES = ["lgm.ipc=2", "lgm.augs_per_batch=4", "lgm.iterations=6", "lgm.pyramid_extent_it=2",
         "lgm.checkpoint_every=4", "lgm.log_every=3", "lgm.image_log_every=3"]


@pytest.fixture
def lgm_toy(make_archive, tmp_path):
    """A prepared 3-class 16x16 archive (16 train images per class), a tiny teacher artifact and
    the overrides that distil one set on it."""
    archive = make_archive(name="toy", counts={"train": 16, "test": 2}, sizes=[(16, 16)])
    data_dir = tmp_path / "tfds"
    load_arrays("toy", "train", archive=archive.root, data_dir=data_dir)  # prepared once, here
    model = build_model("convnet", num_outputs=0, width=8, image_size=16)
    write_artifact(tmp_path / "teacher", init_params(model, jax.random.key(0), 16),
                   {"model": "convnet", "model_kwargs": {"width": 8}, "image_size": [16, 16],
                    "dataset": "cifar10", "feature_dim": 32})
    return ["data.name=toy", f"data.archive={archive.root}", f"data.data_dir={data_dir}",
            "data.train_subset=0", f"lgm.backbones=('tiny=ddjax:{tmp_path / 'teacher'}',)", *SIZES]


def _cli(workdir, overrides, capsys):
    code = main(stage_args(["distill", "lgm"], workdir, overrides, CONFIG))
    out = capsys.readouterr()
    return code, out.out, out.err


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


def _metrics(workdir):
    lines = (workdir / "lgm" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _snapshots(workdir):
    return sorted(p.name for p in (workdir / "lgm" / "tiny" / "snapshots").glob("*.png"))


def test_distill_lgm_on_8_devices_and_2_processes_equals_1_device(lgm_toy, tmp_path, capsys):
    one, eight, two_by_four = tmp_path / "one", tmp_path / "eight", tmp_path / "two_by_four"
    # The other layouts run in their own processes while this one runs in-process; they read
    # their rows of each real batch from the data source (data.stream), this one from memory.
    streamed = [*lgm_toy, "data.stream=True"]
    runs8 = start(stage_args(["distill", "lgm"], eight, streamed, CONFIG), devices=8)
    runs2x4 = start(stage_args(["distill", "lgm"], two_by_four, streamed, CONFIG), devices=4,
                    processes=2)
    code, out, err = _cli(one, lgm_toy, capsys)
    assert code == 0, err
    assert _summary(out)["mesh"] == {"devices": 1, "processes": 1, "shape": {"data": 1}}
    results = finish(runs8) + finish(runs2x4)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    summaries = [_summary(out) for _, out, _ in results]
    assert summaries[0]["mesh"] == {"devices": 8, "processes": 1, "shape": {"data": 8}}
    assert all(s["mesh"] == {"devices": 8, "processes": 2, "shape": {"data": 8}}
               for s in summaries[1:])

    ours, _, our_meta = read_image_set(LGM_SET, LGM_SET.locate(one, tag="tiny"))
    assert ours.shape == (6, 16, 16, 3)
    for workdir in (eight, two_by_four):
        theirs, labels, meta = read_image_set(LGM_SET, LGM_SET.locate(workdir, tag="tiny"))
        assert relative_error(ours, theirs) <= TOLERANCE
        np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
        assert meta["final_loss"] == pytest.approx(our_meta["final_loss"], rel=TOLERANCE)
        # One metrics file, each logged step once (process 0 writes), with the 1-device figures.
        a, b = _metrics(one), _metrics(workdir)
        assert [r["step"] for r in b] == [0, 3, 6] and [r["levels"] for r in b] == [1, 2, 3]
        for x, y in zip(a, b):
            assert y["loss"] == pytest.approx(x["loss"], rel=TOLERANCE)
            assert y["loss_mean"] == pytest.approx(x["loss_mean"], rel=TOLERANCE)
        assert b[0]["mesh"]["devices"] == 8
        assert _snapshots(workdir) == _snapshots(one) == ["step_000000.png", "step_000003.png",
                                                          "step_000006.png"]


def test_a_non_finite_loss_stops_the_run_before_anything_of_it_is_written(lgm_toy, tmp_path,
                                                                          capsys, monkeypatch):
    real = lgm_stage.make_train_step

    def nan_at_step_4(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            levels, opt_state, loss = step(*a)
            return levels, opt_state, loss * np.nan if len(calls) == 5 else loss

        return wrapped

    monkeypatch.setattr(lgm_stage, "make_train_step", nan_at_step_4)
    workdir = tmp_path / "nan"
    code, _, err = _cli(workdir, lgm_toy, capsys)
    last = err.strip().splitlines()[-1]   # one line, below the closed progress bar
    assert code == 2 and last == ("ddjax: error: the LGM meta-loss at step 4 for backbone tiny "
                                  "became nan; lower lgm.lr"), err
    # Read back at step 6 (the next log), the steps from 4 on left no trace: no metrics, snapshot,
    # checkpoint or set after step 3 (the checkpoint "4" holds the state after step 3).
    assert [r["step"] for r in _metrics(workdir)] == [0, 3]
    assert _snapshots(workdir) == ["step_000000.png", "step_000003.png"]
    resume = workdir / "lgm" / "tiny" / "resume"
    assert sorted(p.name for p in resume.iterdir() if p.name.isdigit()) == ["4"]
    assert not LGM_SET.is_complete(LGM_SET.locate(workdir, tag="tiny"))


PROBES = """
import json
import jax
import numpy as np
from ddjax import mesh
from ddjax.lgm.probe import topk_accuracy, train_probes

rng = np.random.default_rng(0)
features, labels = rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 3, 40)
probes, loss = train_probes(features, labels, list(range(8)), num_classes=3, dim=6, epochs=3,
                            batch_size=16, lr=0.05)
print(json.dumps({"W": mesh.fetch(probes.W).tolist(), "loss": loss.tolist(),
                  "top1": topk_accuracy(probes, features, labels, 1).tolist(),
                  "devices": jax.device_count()}))
"""


def test_eval_probes_split_over_8_devices_equal_1_device():
    """LGM's evaluation probes, 8 seeds split one per device, train as on one device."""
    one, eight = (json.loads(run_python(PROBES, devices=n).strip().splitlines()[-1]) for n in (1, 8))
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert relative_error(one["W"], eight["W"]) <= 1e-5
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    assert eight["top1"] == one["top1"]
