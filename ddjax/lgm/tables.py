"""The tables of ``ddjax eval lgm``: per-method accuracy (same backbone), the cross-model matrix
(distil with A, probe with B), the backbones' alignment and its rank correlation with cross-model
accuracy. ``build_report`` turns the per-(set, backbone) results into one JSON-ready dict and
``render`` into Markdown text. Figures are test accuracy in %, mean +- population std over seeds.
"""

from __future__ import annotations

import numpy as np

from ddjax.lgm.alignment import spearman

ROWS = (("lgm", "LGM (distilled)"), ("neighbors", "Neighbors"), ("centroids", "Centroids"),
        ("random", "Random real"), ("full", "Full dataset"))


def summarize(top1: list, top5: list | None) -> dict:
    out = {"top1_mean": float(np.mean(top1)) * 100, "top1_std": float(np.std(top1)) * 100,
           "n": len(top1)}
    if top5 is not None:
        out.update(top5_mean=float(np.mean(top5)) * 100, top5_std=float(np.std(top5)) * 100)
    return out


def build_report(results: list[dict], distill_tags: list[str], eval_tags: list[str],
                 alignment: dict) -> dict:
    main: dict = {}
    cross: dict = {}
    random_pool: dict = {}
    for r in results:
        group, target, source = r["group"], r["eval_backbone"], r["source"]
        if group == "random":
            pool = random_pool.setdefault(target, {"top1": [], "top5": []})
            pool["top1"] += r["top1"]
            if r["top5"] is None or pool["top5"] is None:
                pool["top5"] = None
            else:
                pool["top5"] += r["top5"]
            continue
        figures = summarize(r["top1"], r["top5"])
        if group == "full":
            main.setdefault("full", {})[target] = figures
            continue
        cross.setdefault(group, {}).setdefault(source, {})[target] = figures
        if source == target:
            main.setdefault(group, {})[target] = figures
    for target, pool in random_pool.items():
        main.setdefault("random", {})[target] = summarize(pool["top1"], pool["top5"])
    pairs = []
    lgm = cross.get("lgm", {})
    for a in distill_tags:
        for b in eval_tags:
            if a == b or b not in lgm.get(a, {}):
                continue
            own = lgm.get(b, {}).get(b)
            top1 = lgm[a][b]["top1_mean"]
            relative = top1 / own["top1_mean"] if own and own["top1_mean"] > 0 else None
            pairs.append({"source": a, "target": b, "top1": top1, "relative": relative,
                          "alignment": alignment["matrix"][a][b]})
    relative = [p["relative"] for p in pairs]
    correlation = {
        "pairs": len(pairs),
        "top1": spearman([p["alignment"] for p in pairs], [p["top1"] for p in pairs]),
        "relative": (spearman([p["alignment"] for p in pairs], relative)
                     if pairs and all(v is not None for v in relative) else None),
    }
    return {"main": main, "cross": cross, "alignment": alignment, "pairs": pairs,
            "correlation": correlation, "distill_backbones": distill_tags,
            "eval_backbones": eval_tags}


def _cell(figures: dict | None, metric: str = "top1") -> str:
    if not figures or f"{metric}_mean" not in figures:
        return "—"
    return f"{figures[metric + '_mean']:.1f} ± {figures[metric + '_std']:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(report: dict, scale: str | None = None) -> str:
    """Markdown tables; ``scale`` (``ddjax.smoke.scale_note``) is said first, e.g. that a
    smoke-sized run's numbers check the plumbing."""
    evals, distills = report["eval_backbones"], report["distill_backbones"]
    lines = [f"**{scale}**", ""] if scale else []
    for metric in ("top1", "top5"):
        name = metric.replace("top", "Top-")
        lines += [f"### {name} accuracy (%), probe backbone = distillation backbone", ""]
        rows = [[label] + [_cell(report["main"].get(group, {}).get(b), metric) for b in evals]
                for group, label in ROWS if group in report["main"]]
        lines += _table(["method"] + evals, rows) + [""]
    for group, label in ROWS[:3]:
        matrix = report["cross"].get(group)
        if not matrix:
            continue
        lines += [f"### {label}: top-1 (%), rows = distilled with, columns = probed with", ""]
        rows = [[a] + [_cell(matrix.get(a, {}).get(b)) for b in evals] for a in distills]
        lines += _table(["distilled \\ probe"] + evals, rows) + [""]
    al = report["alignment"]
    lines += [f"### Mutual {al['k']}-NN alignment on {al['images']} test images", ""]
    rows = [[a] + [f"{al['matrix'][a][b]:.3f}" for b in al["tags"]] for a in al["tags"]]
    lines += _table(["backbone"] + al["tags"], rows) + [""]
    if report["pairs"]:
        lines += ["### Cross-model accuracy vs alignment (pairs A != B)", ""]
        rows = [[p["source"], p["target"], f"{p['top1']:.1f}",
                 "—" if p["relative"] is None else f"{p['relative']:.3f}",
                 f"{p['alignment']:.3f}"] for p in report["pairs"]]
        header = ["distilled with", "probed with", "top-1", "top-1 / B's own", "alignment"]
        lines += _table(header, rows)
        corr = report["correlation"]
        fmt = lambda v: "n/a (< 3 pairs or constant)" if v is None else f"{v:+.3f}"  # noqa: E731
        lines += ["", f"Spearman rank correlation over {corr['pairs']} pairs: alignment vs top-1 "
                      f"{fmt(corr['top1'])}; alignment vs relative top-1 {fmt(corr['relative'])}"]
    else:
        lines += ["No cross-model pairs (one backbone): no rank correlation."]
    return "\n".join(lines)
