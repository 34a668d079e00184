"""The result tables of ``ddjax eval mkdt``, shaped like the paper's: one table per label
fraction, rows = pre-training set, columns = downstream dataset; cells are linear-probe test
top-1 in %, mean ± population std over seeds (``np.std``, as the reference reports).
See docs/mkdt.md#evaluation.
"""

from __future__ import annotations

import numpy as np

ROW_LABELS = {"no_pretrain": "No pre-training", "random": "Random subset",
              "high_loss": "High-loss subset", "full": "Full data", "mkdt": "MKDT"}


def fraction_key(fraction: float) -> str:
    """The JSON key of a label fraction: '0.01'."""
    return f"{fraction:g}"


def summarize(accuracies: list[float]) -> dict:
    """Mean and population std in %, and the per-seed accuracies (fractions)."""
    acc = np.asarray(accuracies, np.float64)
    return {"mean": float(acc.mean() * 100), "std": float(acc.std() * 100),
            "per_seed": acc.tolist()}


def build_report(results: list[dict], rows: list[str], datasets: list[str],
                 fractions: list[float], skipped: dict[str, str]) -> dict:
    """``results`` hold one dict per (row, dataset) with ``accuracy[fraction key] = [per seed]``."""
    tables: dict = {fraction_key(f): {} for f in fractions}
    for r in results:
        for key, accs in r["accuracy"].items():
            tables.setdefault(key, {}).setdefault(r["row"], {})[r["dataset"]] = summarize(accs)
    return {"tables": tables, "rows": rows, "datasets": datasets,
            "fractions": [fraction_key(f) for f in fractions], "skipped": skipped,
            "pretraining": {r["row"]: r["pretraining"] for r in results}}


def _label(row: str) -> str:
    return ROW_LABELS.get(row, row)


def render(report: dict, scale: str | None = None) -> str:
    """Markdown tables; ``scale`` (``ddjax.smoke.scale_note``) is said first, e.g. that a
    smoke-sized run's numbers check the plumbing."""
    datasets = report["datasets"]
    lines = [f"**{scale}**", ""] if scale else []
    for key in report["fractions"]:
        lines += [f"### Linear probe top-1 (%), {float(key) * 100:g}% labels", "",
                  "| pre-training set | " + " | ".join(datasets) + " |",
                  "|---|" + "---|" * len(datasets)]
        table = report["tables"].get(key, {})
        for row in report["rows"]:
            cells = [table.get(row, {}).get(d) for d in datasets]
            lines.append(f"| {_label(row)} | " + " | ".join(
                "—" if c is None else f"{c['mean']:.2f} ± {c['std']:.2f}" for c in cells) + " |")
        lines.append("")
    for name, reason in report["skipped"].items():
        lines.append(f"Skipped {name}: {reason}")
    return "\n".join(lines).rstrip()
