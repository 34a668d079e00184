"""``write_report(workdir)``: a page a person opens to judge a run: each stage's curves, the
evaluation results as bar charts, the distilled images with their class names, the recorded
configs and a table of last figures. Only the stages present are shown; see docs/report.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ddjax.report import collect as _collect
from ddjax.report import figures, grids
from ddjax.report.page import Page
from ddjax.runlog import scalar_metrics, series_name, series_of
from ddjax.smoke import smoke_sentence

REPORT_DIR = "report"
_HIDDEN = ("seconds", "train_seconds")   # bookkeeping, not results
_MAX_FIGURES = 6


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _last_figures(stage: _collect.StageData, run: _collect.Run) -> str:
    """The last record's numbers (per series for LGM), or the headline results of an eval."""
    if stage.name == "mkdt_eval" and run.mkdt_results:
        own = (stage.config.get("data") or {}).get("name")
        order = list((stage.config.get("mkdt_eval") or {}).get("rows", []))
        rank = {row: i for i, row in enumerate(order)}
        results = sorted(run.mkdt_results, key=lambda r: rank.get(r["row"], len(rank)))
        first = min(results[0]["accuracy"], key=float)
        cells = [f"{r['row']} {100 * np.mean(r['accuracy'][first]):.1f}%" for r in results
                 if r["dataset"] == own and first in r["accuracy"]]
        return f"top-1 on {own}, {float(first) * 100:g}% labels: " + ", ".join(cells)
    if stage.name == "lgm_eval" and run.lgm_results:
        main = figures.lgm_main(run.lgm_results)
        cells = [f"{g}@{b} {f['top1_mean']:.1f}%" for g, by in main.items() for b, f in by.items()]
        return "top-1: " + ", ".join(cells)
    last: dict = {}
    for record in stage.records:
        last[series_of(record)] = record
    parts = []
    for series, record in last.items():
        values = {k: v for k, v in scalar_metrics(record).items() if k not in _HIDDEN}
        lists = {k: float(np.mean(v)) for k, v in record.items()
                 if k not in ("experts", "start_epochs") and isinstance(v, list) and v
                 and all(isinstance(x, (int, float)) for x in v)}
        values.update({f"mean {k}": v for k, v in lists.items()})
        text = ", ".join(f"{k} {_number(v)}" for k, v in list(values.items())[:_MAX_FIGURES])
        name = series_name(series)
        parts.append(f"[{name}] {text}" if name else text)
    return "; ".join(parts) or "—"


def _glance(page: Page, run: _collect.Run) -> None:
    rows = []
    for name, stage in run.stages.items():
        steps = [r["step"] for r in stage.records if isinstance(r.get("step"), int)]
        rows.append([name, _collect.STAGES[name], str(len(stage.records)),
                     str(max(steps)) if steps else "—", _last_figures(stage, run),
                     run.artifacts.get(name, "")])
    page.table(["stage", "command", "records", "last step", "last figures", "artifacts"], rows)


def _mkdt_eval(page: Page, run: _collect.Run) -> None:
    from ddjax.mkdt import tables as mkdt_tables

    config = run.stages["mkdt_eval"].config.get("mkdt_eval") or {}
    found_rows = list(dict.fromkeys(r["row"] for r in run.mkdt_results))
    rows = [r for r in config.get("rows", []) if r in found_rows]
    rows += [r for r in found_rows if r not in rows]
    found_sets = list(dict.fromkeys(r["dataset"] for r in run.mkdt_results))
    datasets = [d for d in config.get("downstream", []) if d in found_sets]
    datasets += [d for d in found_sets if d not in datasets]
    found_keys = {k for r in run.mkdt_results for k in r["accuracy"]}
    fractions = [mkdt_tables.fraction_key(f) for f in config.get("label_fractions", [])]
    fractions = [k for k in fractions if k in found_keys]
    fractions += sorted(found_keys - set(fractions), key=float)
    page.figure("mkdt_eval", figures.mkdt_results(run.mkdt_results, rows, datasets, fractions),
                "Linear-probe top-1 after pre-training on each set; error bars: population std "
                "over seeds.")
    report = mkdt_tables.build_report(run.mkdt_results, rows, datasets,
                                      [float(k) for k in fractions], {})
    page.markdown_tables(mkdt_tables.render(report))


def _lgm_eval(page: Page, run: _collect.Run) -> None:
    from ddjax.lgm import tables as lgm_tables

    page.figure("lgm_eval", figures.lgm_results(run.lgm_results),
                "Each set's linear probes on the backbone it was made for (random real sets "
                "pooled over their seeds); error bars: population std over seeds.")
    if run.lgm_alignment is not None:
        distill = list(dict.fromkeys(r["source"] for r in run.lgm_results if r["group"] == "lgm"))
        evals = list(dict.fromkeys(r["eval_backbone"] for r in run.lgm_results))
        page.markdown_tables(lgm_tables.render(
            lgm_tables.build_report(run.lgm_results, distill, evals, run.lgm_alignment)))


def _image_sets(page: Page, run: _collect.Run, which: str) -> None:
    if which == "mkdt":
        sets = [(f"synset_iter_{i:06d}", _collect.mkdt_image_set(run, i, d))
                for i, d in run.mkdt_synsets]
        if run.mkdt_synsets_saved > len(sets):
            page.text(f"{len(sets)} of the {run.mkdt_synsets_saved} saved sets are shown (the "
                      "first, the last and evenly spaced ones between).")
    else:
        sets = [(f"lgm_set_{tag}", _collect.lgm_image_set(tag, d)) for tag, d in run.lgm_sets]
    for name, image_set in sets:
        caption = "Class names under the tiles" + (
            ", ordered by class (labels of the real images the set started from)."
            if which == "mkdt" and image_set.names else ".")
        if image_set.note:
            caption = image_set.note
        page.figure(name, grids.labelled_grid(image_set.images, image_set.names, image_set.title),
                    caption)


def _figure(page: Page, name: str, fig, caption: str, empty: str) -> None:
    if fig is None:
        page.text(empty)
    else:
        page.figure(name, fig, caption)


def write_report(workdir: str | Path) -> Path:
    """Write ``<workdir>/report/index.html`` (self-contained) and ``report.md`` with its PNGs for
    the stages present in ``workdir``; returns the path of ``index.html``. A workdir with no stage
    output is a DdjaxError naming what to run."""
    run = _collect.collect(workdir)
    stages = run.stages
    page = Page(f"ddjax run report: {run.workdir.name}")
    missing = [name for name in _collect.STAGES if name not in stages]
    page.text(f"Workdir {run.workdir}; written {time.strftime('%Y-%m-%d %H:%M:%S')}. Stages "
              f"present: {', '.join(stages)}."
              + (f" Not run here: {', '.join(missing)}." if missing else ""))
    if run.smoke:
        page.note(smoke_sentence(run.smoke))
    page.heading("At a glance")
    _glance(page, run)

    if "teacher" in stages:
        page.heading("Teacher")
        records = stages["teacher"].records
        imported = [r for r in records if "imported" in r]
        _figure(page, "teacher", figures.teacher(records), "",
                f"Imported from {imported[-1]['imported']}: k-NN accuracy "
                f"{imported[-1].get('knn_accuracy')}, no training curves." if imported
                else "No training epoch recorded yet.")
    if "experts" in stages:
        page.heading("Experts")
        _figure(page, "experts", figures.experts(stages["experts"].records),
                "Each expert's knowledge-distillation loss, mean over each epoch.",
                "No expert epoch recorded yet.")
    if "distill" in stages:
        from ddjax.mkdt.stability import MAX_GROWTH

        page.heading("MKDT distillation")
        records = stages["distill"].records
        _figure(page, "distill", figures.distill(records), "",
                "No distillation iteration recorded yet.")
        page.figure("distill_stability", figures.stability(records, MAX_GROWTH),
                    "Checked every distill.stability_every iterations; past the red lines the "
                    "inner unroll is unstable and the meta-gradient untrustworthy.")
        _image_sets(page, run, "mkdt")
    if "mkdt_eval" in stages and run.mkdt_results:
        page.heading("MKDT evaluation")
        _mkdt_eval(page, run)
    if "lgm" in stages:
        page.heading("LGM distillation")
        _figure(page, "lgm_distill", figures.lgm(stages["lgm"].records), "",
                "No LGM step recorded yet.")
        _image_sets(page, run, "lgm")
    if "lgm_eval" in stages and run.lgm_results:
        page.heading("LGM evaluation")
        _lgm_eval(page, run)

    page.heading("Recorded configs")
    for name, stage in stages.items():
        for file_name, config in stage.configs.items():
            page.json(f"{name}/{file_name}", config)
    return page.write(run.workdir / REPORT_DIR)


__all__ = ["write_report", "REPORT_DIR"]
