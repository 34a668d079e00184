"""`ddjax run mkdt|lgm` on the tiny toy archive: a run interrupted mid-stage resumes, a rerun of a
finished run redoes nothing (every stage skipped, no artifact touched), the last stdout line is
strict JSON, the report is written; a config without a stage's section and a missing input are
one line before any work. (Each stage's own resume is tested with the stage.)"""

import json
from pathlib import Path

import pytest

import jax
import jax.numpy as jnp

import ddjax.mkdt.eval_stage as mkdt_eval_stage
import ddjax.mkdt.select_stage as select_stage
from ddjax.artifacts.results import MKDT_ENCODERS, MKDT_RESULT
from ddjax.backbones.registry import Backbone, register_family
from ddjax.cli import main
from ddjax.pipeline import CHAINS

REPO = Path(__file__).resolve().parents[1]
# The teacher, experts and evaluation at toy sizes (12 training images per class, 8x8).
TEACHER = ["teacher.model_kwargs.width=4", "teacher.batch_size=12", "teacher.knn_k=5",
           "teacher.projector_hidden_dims=(16,)", "teacher.projector_output_dim=16"]
EVAL = ["mkdt_eval.downstream=('toy', 'cifar100')", "mkdt_eval.label_fractions=(0.5,)",
        "mkdt_eval.seeds=(0,)", "mkdt_eval.epochs=1", "mkdt_eval.batch_size=8",
        "mkdt_eval.probe_steps=2", "mkdt_eval.feature_batch=8",
        "mkdt_eval.rows=('random', 'mkdt')"]
# The toy pipeline, smaller still: one program of 2 experts, 2 distillation iterations.
SMALL = TEACHER + EVAL + ["mkdt_eval.rows=('mkdt',)", "experts.num_experts=2", "experts.epochs=2",
                          "distill.iterations=2", "distill.save_every=1"]
LGM = ["lgm.iterations=3", "lgm.augs_per_batch=1", "lgm.pyramid_extent_it=2", "lgm.log_every=1",
       "lgm_eval.seeds=1", "lgm_eval.epochs=2", "lgm_eval.random_seeds=(0,)",
       "lgm_eval.baselines=('random', 'centroids')", "lgm_eval.alignment_images=6"]


def _reject(constant):
    raise ValueError(f"not strict JSON: {constant}")


def last_json(out: str) -> dict:
    """The last stdout line, parsed strictly (NaN / Infinity are errors)."""
    return json.loads(out.strip().splitlines()[-1], parse_constant=_reject)


def _files(workdir: Path) -> dict[str, float]:
    """mtime of every file a stage owns (the report is rewritten by every run; the lock file
    records its holder)."""
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*")
            if p.is_file() and p.name != ".lock" and p.relative_to(workdir).parts[0] != "report"}


def test_run_resumes_after_an_interrupt_and_a_finished_run_redoes_nothing(toy_pipeline, tmp_path,
                                                                          monkeypatch):
    toy, workdir = toy_pipeline, tmp_path / "run"

    def interrupted(stage):
        raise KeyboardInterrupt("simulated Ctrl-C")

    monkeypatch.setattr(select_stage, "run_random", interrupted)
    with pytest.raises(KeyboardInterrupt):
        toy.cli(["run", "mkdt"], workdir, SMALL)
    err = toy.capsys.readouterr().err
    assert "ddjax run: stage 3/7 experts ..." in err
    assert "interrupted in stage 5/7 select random; run the same command again to resume" in err
    monkeypatch.undo()

    code, out, err = toy.cli(["run", "mkdt"], workdir, SMALL)
    assert code == 0, err
    summary = last_json(out)
    statuses = {name: s["status"] for name, s in summary["stages"].items()}
    assert list(statuses) == [" ".join(words) for words in CHAINS["mkdt"]]
    assert statuses == {"teacher": "skipped", "represent": "skipped", "experts": "skipped",
                        "select high-loss": "skipped", "select random": "ran",
                        "distill mkdt": "ran", "eval mkdt": "ran"}
    report = Path(summary["artifacts"]["report"])
    assert report == workdir.absolute() / "report" / "index.html" and report.exists()
    tables = Path(summary["artifacts"]["tables"])
    assert tables.read_text().startswith("**Smoke-sized run (distill.iterations = 2 < 50)")
    assert out.count("| MKDT |") == 1 and "Skipped cifar100" in out   # the table, once
    assert err.count("skipping the downstream datasets not readable here: cifar100") == 1
    for line in out.splitlines():   # every JSON line on stdout is strict (the stages' too)
        if line.startswith("{"):
            json.loads(line, parse_constant=_reject)
    before = _files(workdir)

    code, out, err = toy.cli(["run", "mkdt"], workdir, SMALL)
    assert code == 0, err
    summary = last_json(out)
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert sum(s["seconds"] for s in summary["stages"].values()) < 10
    assert _files(workdir) == before   # nothing recomputed, nothing rewritten
    assert err.count(": complete, skipped") == 7
    assert out.count("| MKDT |") == 1   # the table of the skipped evaluation, printed by the run
    assert (workdir / "report" / "index.html").exists()

    # A rerun with other settings of a finished stage is refused, as its own command refuses it.
    code, _, err = toy.cli(["run", "mkdt"], workdir, SMALL + ["experts.lr=0.5"])
    assert code == 2 and "stage 3/7 experts" in err and "experts.lr" in err


def _smooth_backbone(spec: str) -> Backbone:
    """``pipelinetest:<seed>``: tanh of a random projection of 8x8 images (compiles quickly)."""
    V = jax.random.normal(jax.random.key(int(spec.partition(":")[2] or 0)), (8 * 8 * 3, 6)) / 8
    return Backbone(name=spec, features=lambda v, x: jnp.tanh(x.reshape(x.shape[0], -1) @ v["V"]),
                    variables={"V": V}, resolution=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                    feature_dim=6)


def test_lgm_run_without_the_teacher_and_its_rerun(toy_pipeline, tmp_path):
    register_family("pipelinetest", _smooth_backbone)
    workdir = tmp_path / "lgm"
    args = ["run", "lgm", "--config", str(REPO / "experiments" / "smoke.py") + ":lgm",
            "--workdir", str(workdir)]
    for item in toy_pipeline.overrides[:4] + LGM + ["lgm.backbones=('pipelinetest:0',)"]:
        args += ["--set", item]
    assert main(args) == 0
    captured = toy_pipeline.capsys.readouterr()
    summary = last_json(captured.out)
    # No backbone is this workdir's teacher: the chain does not train one.
    assert {n: s["status"] for n, s in summary["stages"].items()} == {
        "distill lgm": "ran", "eval lgm": "ran"}
    assert "ddjax run: stage 1/2 distill lgm ..." in captured.err
    assert summary["artifacts"]["tables"].endswith("lgm_eval/tables.md")
    assert "**Smoke-sized run (lgm.iterations = 3 < 50)" in captured.out
    assert (workdir / "report" / "index.html").exists() and not (workdir / "teacher").exists()
    assert main(args) == 0
    summary = last_json(toy_pipeline.capsys.readouterr().out)
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}


def test_a_config_without_a_stage_section_is_one_line_before_anything_runs(tmp_path, capsys):
    workdir = tmp_path / "w"
    code = main(["run", "lgm", "--config", str(REPO / "experiments" / "smoke.py"),
                 "--workdir", str(workdir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("ddjax: error: the config has no 'lgm' section")
    assert "`ddjax distill lgm`" in err and "experiments/smoke.py:lgm" in err
    assert not workdir.exists()


def test_eval_mkdt_without_a_distilled_set_fails_before_any_row(toy_pipeline, tmp_path,
                                                                monkeypatch):
    toy, workdir = toy_pipeline, tmp_path / "run"
    toy.write_reps(workdir)
    code, _, err = toy.cli(["select", "random"], workdir)
    assert code == 0, err

    def no_work(*args, **kwargs):
        raise AssertionError("a row was pre-trained or probed before the inputs were checked")

    monkeypatch.setattr(mkdt_eval_stage, "evaluate", no_work)
    monkeypatch.setattr(mkdt_eval_stage, "pretrain", no_work)
    rows = "mkdt_eval.rows=('no_pretrain', 'random', 'mkdt')"
    code, _, err = toy.cli(["eval", "mkdt"], workdir, EVAL + [rows])
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("ddjax: error:") and "ddjax distill mkdt" in last
    # The same for a baseline whose selection is missing (here: high-loss).
    rows = "mkdt_eval.rows=('no_pretrain', 'high_loss')"
    code, _, err = toy.cli(["eval", "mkdt"], tmp_path / "other", EVAL + [rows])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "ddjax select high-loss" in last, last
    results = MKDT_RESULT.locate(workdir, row="x", dataset="x").parent
    assert not results.exists() and not MKDT_ENCODERS.locate(workdir, row="random").exists()
