"""``ddjax.report.write_report`` on small workdirs written with the artifact writers and
MetricsLog (no stage runs): one figure per stage output present, a partial workdir gives a
partial report, an empty one a one-line error."""

import json
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ddjax.artifacts.image_set import LGM_SET, write_image_set
from ddjax.artifacts.results import LGM_RESULT, MKDT_RESULT, write_result
from ddjax.artifacts.synset import SYNSET, write_synset
from ddjax.data.pipeline import load_split
from ddjax.errors import DdjaxError
from ddjax.report import collect, write_report
from ddjax.runlog import MetricsLog, write_json_atomic

CLASSES = ("cat", "dog", "emu")     # the toy archive's class folders, in label order


def toy_archive(root):
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.full((8, 8, 3), 30 * i + 80 * label, np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def stage(workdir, name, config, records=()):
    write_json_atomic(workdir / name / "config.json", config, sort_keys=True)
    log = MetricsLog(workdir / name, name)
    for step, fields in records:
        log.write(step, **fields)
    log.close()


def mkdt_stages(workdir, data, iterations=3):
    stage(workdir, "teacher", {"data": data, "teacher": {"epochs": 2, "train_subset": 0}},
          [(0, {"epoch": 0, "knn_accuracy": 0.3}),
           (7, {"epoch": 1, "loss": 14.0, "knn_accuracy": 0.35}),
           (14, {"epoch": 2, "loss": 12.5, "knn_accuracy": 0.4})])
    stage(workdir, "experts", {"data": data, "experts": {"epochs": 2}},
          [(e, {"experts": [0, 1], "epoch": e, "loss": [1.0 / e, 1.1 / e]}) for e in (1, 2)])
    records = [(i, {"loss": 0.6 - 0.01 * i, "lr": 0.1 + 0.001 * i, "image_change": 0.01 * i,
                    "grad_norm": {"images": 1e-3 * i, "lr": 3.0, "targets": 2e-3}, "experts": [0]})
               for i in range(1, iterations + 1)]
    records[0][1].update(lambda_max_start=9.0, lambda_max_end=17.0, lr_growth=0.9,
                         lr_lambda_max_start=0.9, lr_lambda_max_end=1.7)
    stage(workdir, "distill", {"data": data, "distill": {"iterations": iterations}}, records)
    rng = np.random.default_rng(0)
    init = [7, 0, 4, 2]          # rows of the (subset) train split the set started from
    for iteration in (0, iterations):
        pixels = rng.random((4, 8, 8, 3), np.float32)
        meta = {"dataset": data["name"], "iteration": iteration, "init_indices": init}
        write_synset(SYNSET.locate(workdir, iteration=iteration), pixels, pixels,
                     rng.random((4, 5), np.float32), 0.1, meta)
    stage(workdir, "mkdt_eval", {"data": data, "mkdt_eval": {
        "rows": ["random", "mkdt"], "downstream": [data["name"]], "label_fractions": [0.01, 0.05]}})
    for row, base in (("random", 0.30), ("mkdt", 0.40)):
        write_result(MKDT_RESULT, MKDT_RESULT.locate(workdir, row=row, dataset=data["name"]),
                     {"row": row, "dataset": data["name"], "seeds": [0, 1], "pretraining": {},
                      "accuracy": {"0.01": [base, base + 0.02], "0.05": [base + 0.1, base + 0.12]}})
    return init


def lgm_stages(workdir, data):
    stage(workdir, "lgm", {"data": data, "lgm": {"iterations": 10}},
          [(s, {"backbone": tag, "loss": 1.0 - 0.05 * s, "loss_mean": 1.0 - 0.04 * s})
           for tag in ("a", "b") for s in (0, 5, 10)])
    labels = np.arange(3, dtype=np.int32)
    write_image_set(LGM_SET, LGM_SET.locate(workdir, tag="a"),
                    np.full((3, 8, 8, 3), 0.5, np.float32), labels,
                    {"dataset": data["name"], "updates": 11, "class_names": list(CLASSES)})
    stage(workdir, "lgm_eval", {"data": data, "lgm_eval": {}})
    for name, group, source, top1 in (("lgm_a", "lgm", "a", [0.5, 0.6]),
                                      ("random_0", "random", None, [0.4]),
                                      ("random_1", "random", None, [0.3]),
                                      ("full", "full", None, [0.9, 0.8])):
        write_result(LGM_RESULT, LGM_RESULT.locate(workdir, name=name, backbone="a"),
                     {"set": name, "eval_backbone": "a", "group": group, "source": source,
                      "top1": top1, "top5": None})


def embedded(html):
    return re.findall(r"<img alt='([^']+)' src='data:image/png;base64,", html)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = {"name": "toy", "archive": str(toy_archive(root / "toy")),
            "data_dir": str(root / "tfds"), "train_subset": 8}
    workdir = root / "work"
    init = mkdt_stages(workdir, data)
    lgm_stages(workdir, data)
    return workdir, data, init, write_report(workdir)


def test_the_report_shows_every_stage_present(full_run):
    workdir, _, _, index = full_run
    out = workdir / "report"
    assert index == out / "index.html"
    expected = {"teacher", "experts", "distill", "distill_stability", "synset_iter_000000",
                "synset_iter_000003", "mkdt_eval", "lgm_distill", "lgm_set_a", "lgm_eval"}
    assert sorted(embedded(index.read_text())) == sorted(expected)
    assert {p.stem for p in out.glob("*.png")} == expected
    markdown = (out / "report.md").read_text()
    assert sorted(re.findall(r"!\[[^]]*\]\(([^)]+)\.png\)", markdown)) == sorted(expected)
    for name in expected:
        assert Image.open(out / f"{name}.png").size[0] > 300
    for text in (index.read_text(), markdown):
        # the configs as recorded, and the MKDT table from the result artifacts (mean of 2 seeds)
        assert "distill/config.json" in text and "lgm_eval/config.json" in text
        assert "41.00 ± 1.00" in text and "31.00 ± 1.00" in text
        assert "not a measurement" in text and "data.train_subset = 8" in text


def test_the_glance_table_has_each_stages_last_figures(full_run):
    workdir, *_ = full_run
    markdown = (workdir / "report" / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines()
            if line.startswith("| ") and " | ddjax " in line}
    assert list(rows) == ["teacher", "experts", "distill", "mkdt_eval", "lgm", "lgm_eval"]
    assert "loss 12.5" in rows["teacher"] and "knn_accuracy 0.4" in rows["teacher"]
    assert f"mean loss {np.mean([1 / 2, 1.1 / 2]):.4g}" in rows["experts"]
    assert "loss 0.57" in rows["distill"] and "2 saved sets" in rows["distill"]
    assert "[backbone=a] loss 0.5" in rows["lgm"] and "[backbone=b]" in rows["lgm"]
    assert "random 31.0%" in rows["mkdt_eval"] and "mkdt 41.0%" in rows["mkdt_eval"]
    # random real sets pooled over their seeds, as ddjax eval lgm's table
    assert "random@a 35.0%" in rows["lgm_eval"] and "lgm@a 55.0%" in rows["lgm_eval"]


def test_mkdt_tiles_are_named_by_the_labels_of_the_images_they_started_from(full_run):
    workdir, data, init, _ = full_run
    run = collect.collect(workdir)
    shown = collect.mkdt_image_set(run, 3, SYNSET.locate(workdir, iteration=3))
    _, labels = load_split(ml_collections.ConfigDict(data), "train")   # as the stages see the split
    assert shown.names == [CLASSES[i] for i in sorted(labels[init])] and not shown.note
    assert collect.lgm_image_set("a", LGM_SET.locate(workdir, tag="a")).names == list(CLASSES)


def test_a_partial_workdir_gives_a_partial_report(tmp_path):
    data = {"name": "nowhere", "archive": "", "data_dir": "", "train_subset": 0}
    stage(tmp_path, "teacher", {"data": data, "teacher": {"epochs": 2}},
          [(0, {"epoch": 0, "knn_accuracy": 0.3}),
           (7, {"epoch": 1, "loss": 14.0, "knn_accuracy": 0.35})])
    stage(tmp_path, "lgm", {"data": data, "lgm": {"iterations": 1000}},
          [(s, {"backbone": "a", "loss": 1.0 / (s + 1)}) for s in (0, 500, 1000)])
    html = write_report(tmp_path).read_text()
    assert sorted(embedded(html)) == ["lgm_distill", "teacher"]
    assert "MKDT" not in html and "not a measurement" not in html
    assert "Not run here: represent, experts, select, distill, mkdt_eval, lgm_eval." in html


def test_a_set_whose_data_is_not_here_is_shown_without_names(tmp_path):
    data = {"name": "nowhere", "archive": str(tmp_path / "missing"), "data_dir": "",
            "train_subset": 0}
    mkdt_stages(tmp_path, data, iterations=60)
    run = collect.collect(tmp_path)
    shown = collect.mkdt_image_set(run, 60, SYNSET.locate(tmp_path, iteration=60))
    assert shown.names is None and shown.note.startswith("class names unavailable")
    html = write_report(tmp_path).read_text()
    assert "synset_iter_000060" in embedded(html) and "class names unavailable" in html
    assert "not a measurement" not in html       # 60 iterations on the whole split


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: p])
def test_a_workdir_without_stages_is_one_line(tmp_path, make):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(DdjaxError) as err:
        write_report(make(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "holds no ddjax stage output" in message
    assert "ddjax teacher --config" in message
    assert not (tmp_path / "report").exists()


def test_recorded_configs_are_in_the_page_as_written(full_run):
    workdir, *_ = full_run
    html = (workdir / "report" / "index.html").read_text()
    recorded = json.loads((workdir / "mkdt_eval" / "config.json").read_text())
    assert json.dumps(recorded, indent=2, sort_keys=True).replace('"', "&quot;") in html
