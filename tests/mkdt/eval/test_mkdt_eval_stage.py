"""`ddjax eval mkdt` on a tiny pipeline: every row and fraction gets a result, missing downstream
data is skipped with its reason, a rerun reuses what is done, bad inputs are one-line errors."""

import json
import shutil

import numpy as np
import pytest

import ddjax.mkdt.eval_stage as eval_stage
from ddjax.artifacts.results import MKDT_RESULT, read_result
from ddjax.artifacts.selection import SELECTION, read_selection
from ddjax.artifacts.synset import find_synset, read_synset
from ddjax.mkdt import tables as mkdt_tables

EVAL = ["mkdt_eval.downstream=('toy', 'cifar100')", "mkdt_eval.label_fractions=(0.25, 0.5)",
        "mkdt_eval.seeds=(0, 1)", "mkdt_eval.epochs=2", "mkdt_eval.batch_size=8",
        "mkdt_eval.probe_steps=3", "mkdt_eval.feature_batch=8"]


@pytest.fixture
def distilled(toy_pipeline, tmp_path):
    toy, workdir = toy_pipeline, tmp_path / "run"
    toy.write_reps(workdir)
    for command in (["experts"], ["select", "high-loss"], ["select", "random"], ["distill", "mkdt"]):
        code, _, err = toy.cli(command, workdir)
        assert code == 0, err
    return toy, workdir


def test_eval_writes_every_row_and_fraction_and_resumes(distilled, monkeypatch):
    toy, workdir = distilled
    extra = f"mkdt_eval.extra_synsets=('again={workdir}',)"
    rows = "mkdt_eval.rows=('no_pretrain', 'random', 'high_loss', 'full', 'mkdt')"
    code, out, err = toy.cli(["eval", "mkdt"], workdir, EVAL + [extra, rows])
    assert code == 0, err
    assert "skipping the downstream datasets not readable here: cifar100" in err  # once
    assert "cifar100" not in out.split("### ")[0]  # stdout: the tables (which say why), no more
    report = json.loads((workdir / "mkdt_eval" / "results.json").read_text())
    assert report["datasets"] == ["toy"] and list(report["skipped"]) == ["cifar100"]
    names = ["no_pretrain", "random", "high_loss", "full", "mkdt", "again"]
    assert report["rows"] == names
    for key in ("0.25", "0.5"):
        for row in names:
            cell = report["tables"][key][row]["toy"]
            acc = np.asarray(cell["per_seed"])
            assert acc.shape == (2,) and ((0 <= acc) & (acc <= 1)).all()
            assert cell["mean"] == pytest.approx(acc.mean() * 100)
            assert cell["std"] == pytest.approx(acc.std() * 100)
    synset, meta = read_synset(find_synset(workdir))
    assert meta["iteration"] == 4
    pre = report["pretraining"]
    assert pre["mkdt"]["lr"] == pytest.approx(float(synset["lr"])) and pre["random"]["lr"] == 0.1
    random50, _ = read_selection(SELECTION.locate(workdir, method="random", percent=50))
    assert pre["random"]["num_images"] == len(random50)
    assert pre["full"]["num_images"] == toy.train_images
    assert pre["again"]["source"] == pre["mkdt"]["source"]
    tables = (workdir / "mkdt_eval" / "tables.md").read_text()
    assert "| MKDT |" in tables and "25% labels" in tables and "Skipped cifar100" in tables
    steps = [json.loads(line)["step"] for line in (workdir / "mkdt_eval" / "metrics.jsonl").read_text().splitlines()]
    assert len(set(steps)) == len(steps) == len(names)

    def no_pretraining(*args, **kwargs):
        raise AssertionError("a finished evaluation was recomputed")

    monkeypatch.setattr(eval_stage, "pretrain", no_pretraining)
    # Distillation settings eval does not read never block it.
    code, out2, err = toy.cli(["eval", "mkdt"], workdir, EVAL + [extra, rows, "distill.iterations=7"])
    assert code == 0, err
    recorded = json.loads((workdir / "mkdt_eval" / "config.json").read_text())
    assert recorded["distill"] == {"percent": 50}
    assert recorded["experts"] == {"representations": "", "standardize_targets": False}
    assert json.loads((workdir / "mkdt_eval" / "results.json").read_text()) == report

    # A newer distilled set appears (distillation went on): the mkdt row's encoders and results
    # were made from iter_000004, so they are not silently reused for the new latest set.
    newer = find_synset(workdir).with_name("iter_000009")
    shutil.copytree(find_synset(workdir), newer)
    code, _, err = toy.cli(["eval", "mkdt"], workdir, EVAL + [extra, rows])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "iter_000004" in last and "iter_000009" in last and "row 'mkdt'" in last


def test_the_same_seeds_reproduce_the_same_result_in_another_workdir(distilled, tmp_path):
    toy, workdir = distilled
    code, _, err = toy.cli(["eval", "mkdt"], workdir, EVAL + ["mkdt_eval.rows=('random',)"])
    assert code == 0, err
    first = read_result(MKDT_RESULT, MKDT_RESULT.locate(workdir, row="random", dataset="toy"))
    again = tmp_path / "again"
    again.mkdir()
    for name in ("represent", "select"):
        (again / name).symlink_to(workdir / name, target_is_directory=True)
    code, _, err = toy.cli(["eval", "mkdt"], again, EVAL + ["mkdt_eval.rows=('random',)"])
    assert code == 0, err
    second = read_result(MKDT_RESULT, MKDT_RESULT.locate(again, row="random", dataset="toy"))
    assert second["accuracy"] == first["accuracy"]


def test_bad_inputs_are_one_line_errors(toy_pipeline, tmp_path):
    cases = [("mkdt_eval.rows=('random',)", "ddjax select random"),
             ("mkdt_eval.downstream=('cifar100',)", "no downstream dataset is readable"),
             ("mkdt_eval.rows=('kmeans',)", "unknown mkdt_eval.rows"),
             ("mkdt_eval.label_fractions=(0, 0.5)", "label_fractions"),
             ("mkdt_eval.rows=('mkdt',)", "ddjax distill mkdt"),
             ("mkdt_eval.extra_synsets=('mkdt=x',)", "built-in row")]
    for i, (setting, message) in enumerate(cases):
        workdir = tmp_path / f"bad{i}"
        toy_pipeline.write_reps(workdir)
        code, _, err = toy_pipeline.cli(["eval", "mkdt"], workdir, EVAL + [setting])
        last = err.strip().splitlines()[-1]
        assert code != 0 and last.startswith("ddjax: error:") and message in last, (setting, last)


def test_tables_are_means_and_population_stds_per_fraction():
    results = [{"row": "mkdt", "dataset": "a", "accuracy": {"0.01": [0.5, 0.7]},
                "pretraining": {"lr": 0.2}},
               {"row": "random", "dataset": "a", "accuracy": {"0.01": [0.4, 0.4]},
                "pretraining": {"lr": 0.1}}]
    report = mkdt_tables.build_report(results, ["random", "mkdt"], ["a", "b"], [0.01], {"b": "gone"})
    cell = report["tables"]["0.01"]["mkdt"]["a"]
    assert cell["mean"] == pytest.approx(60.0) and cell["std"] == pytest.approx(10.0)
    text = mkdt_tables.render(report)
    assert "| Random subset | 40.00 ± 0.00 | — |" in text and "| MKDT | 60.00 ± 10.00 | — |" in text
    assert text.index("Random subset") < text.index("MKDT") and "Skipped b: gone" in text
