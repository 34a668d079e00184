"""The report's plots, one function per figure, each returning a matplotlib ``Figure`` (or None
when its data is absent). Figures are drawn without pyplot (no global state, the Agg canvas), so
they render on machines without a display.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ddjax.mkdt import tables as mkdt_tables
from ddjax.lgm import tables as lgm_tables

# Past this ratio between the largest and the smallest positive value an axis is logarithmic.
LOG_RATIO = 30.0
MARKERS_BELOW = 40   # fewer points than this: draw markers, so single points show


def _figure(panels: int, *, width: float = 5.0, height: float = 3.6, rows: int = 1):
    columns = math.ceil(panels / rows)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _series(records: Iterable[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    points = [(r[x], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
              and isinstance(r.get(x), (int, float))]
    if not points:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*points)
    return np.asarray(xs, float), np.asarray(ys, float)


def _plot(ax, xs, ys, label: str | None = None, **kwargs):
    style = {"marker": "o", "markersize": 4} if len(xs) < MARKERS_BELOW else {}
    return ax.plot(xs, ys, label=label, **style, **kwargs)


def _scale(ax, values: Iterable[float]) -> None:
    """Log scale when the positive values span more than ``LOG_RATIO``."""
    values = np.asarray([v for v in values if np.isfinite(v)], float)
    if values.size and (values > 0).all() and values.max() / values.min() > LOG_RATIO:
        ax.set_yscale("log")


def _finish(ax, title: str, xlabel: str, ylabel: str, legend: bool = False) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # steps, epochs, iterations
    lo, hi = ax.dataLim.intervalx
    if np.isfinite([lo, hi]).all() and hi - lo < 2:          # one or two points: room around
        ax.set_xlim(lo - 1, hi + 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def teacher(records: list[dict]) -> Figure | None:
    """SSL loss per epoch and k-NN accuracy (at init and after epochs)."""
    loss = _series(records, "loss", "epoch")
    knn = _series(records, "knn_accuracy", "epoch")
    if not loss[0].size and knn[0].size < 2:
        return None   # an imported teacher: one k-NN figure, in the summary table
    fig, (a, b) = _figure(2)
    _plot(a, *loss, color="C0")
    _scale(a, loss[1])
    _finish(a, "Teacher SSL loss (mean over each epoch)", "epoch", "loss")
    _plot(b, knn[0], knn[1] * 100, color="C1")
    _finish(b, "Teacher k-NN accuracy on test images", "epoch", "top-1 (%)")
    fig.suptitle("Teacher")
    return fig


def experts(records: list[dict]) -> Figure | None:
    """Each expert's training loss per epoch (records hold a group's losses as a list)."""
    curves: dict[int, list[tuple[int, float]]] = {}
    for r in records:
        if isinstance(r.get("loss"), list) and isinstance(r.get("experts"), list):
            for expert, loss in zip(r["experts"], r["loss"]):
                curves.setdefault(int(expert), []).append((int(r["epoch"]), float(loss)))
    if not curves:
        return None
    fig, (ax,) = _figure(1, width=7.0, height=4.0)
    many = len(curves) > 10
    for expert, points in sorted(curves.items()):
        xs, ys = zip(*sorted(points))
        if many:
            ax.plot(xs, ys, color="C0", alpha=0.25, linewidth=0.8)
        else:
            _plot(ax, xs, ys, label=f"expert {expert}")
    if many:
        epochs = sorted({e for points in curves.values() for e, _ in points})
        mean = [np.mean([dict(p)[e] for p in curves.values() if e in dict(p)]) for e in epochs]
        _plot(ax, epochs, mean, label=f"mean of {len(curves)} experts", color="C3", linewidth=2)
        ax.plot([], [], color="C0", alpha=0.4, label="one expert")
    _scale(ax, [y for points in curves.values() for _, y in points])
    _finish(ax, f"Expert training loss ({len(curves)} experts)", "epoch", "loss (epoch mean)",
            legend=True)
    return fig


def distill(records: list[dict]) -> Figure | None:
    """MKDT trajectory matching: loss, learned lr, gradient norms, image change."""
    loss = _series(records, "loss")
    if not loss[0].size:
        return None
    fig, (a, b, c, d) = _figure(4, rows=2, height=3.3)
    _plot(a, *loss, color="C0")
    _scale(a, loss[1])
    _finish(a, "Matching loss", "iteration", "normalised parameter distance")
    _plot(b, *_series(records, "lr"), color="C1")
    _finish(b, "Learned inner learning rate", "iteration", "lr")
    norms = [r for r in records if isinstance(r.get("grad_norm"), dict)]
    keys = sorted({k for r in norms for k in r["grad_norm"]})
    values = []
    for i, key in enumerate(keys):
        xs, ys = _series([dict(r, _g=r["grad_norm"].get(key)) for r in norms], "_g")
        values += list(ys)
        _plot(c, xs, ys, label=key, color=f"C{i}")
    _scale(c, values)
    _finish(c, "Meta-gradient norm per learned tensor", "iteration", "‖gradient‖", legend=True)
    _plot(d, *_series(records, "image_change"), color="C2")
    _finish(d, "Image change since the start", "iteration", "‖x − x₀‖ / ‖x₀‖")
    fig.suptitle("MKDT distillation")
    return fig


_STABILITY_LABELS = {"start": "first minibatch of the unroll", "end": "last minibatch",
                     "growth": "measured growth"}


def stability(records: list[dict], max_growth: float) -> Figure | None:
    """The unroll's stability checks (``distill.stability_every``): sharpness, lr·sharpness
    against the stability edge 2, and the growth of ‖dθ/dη‖ against ``max_growth``."""
    fields = sorted({k for r in records for k in r if "lambda_max" in k or "lr_growth" in k})
    if not fields:
        return None
    groups = [("Sharpness λ_max of the inner loss", "λ_max",
               [f for f in fields if "lambda_max" in f and not f.startswith("lr_")], None),
              ("lr · λ_max (unstable at ≥ 2)", "lr · λ_max",
               [f for f in fields if f.startswith("lr_lambda_max")], 2.0),
              ("Growth of ‖dθₙ/dη‖ per unroll step", "growth factor",
               [f for f in fields if "lr_growth" in f], max_growth)]
    groups = [g for g in groups if g[2]]
    fig, axes = _figure(len(groups), width=4.6)
    for ax, (title, ylabel, keys, edge) in zip(axes, groups):
        values = []
        for i, key in enumerate(keys):
            xs, ys = _series(records, key)
            values += list(ys)
            _plot(ax, xs, ys, label=_STABILITY_LABELS.get(key.rsplit("_", 1)[-1], key),
                  color=f"C{i}")
        if edge is not None:
            ax.axhline(edge, color="red", linestyle="--", linewidth=1, label=f"limit {edge:g}")
        _scale(ax, values)
        _finish(ax, title, "iteration", ylabel, legend=True)
    fig.suptitle("MKDT unroll stability checks")
    return fig


def lgm(records: list[dict]) -> Figure | None:
    """LGM meta-loss per logged step, one colour per backbone (loss and its running mean)."""
    tags = list(dict.fromkeys(r["backbone"] for r in records if "backbone" in r))
    if not tags:
        return None
    fig, (ax,) = _figure(1, width=7.0, height=4.0)
    values = []
    for i, tag in enumerate(tags):
        mine = [r for r in records if r.get("backbone") == tag]
        xs, ys = _series(mine, "loss")
        values += list(ys)
        _plot(ax, xs, ys, label=f"{tag}: loss at the step", color=f"C{i}", alpha=0.5)
        xs, ys = _series(mine, "loss_mean")
        if xs.size:
            ax.plot(xs, ys, label=f"{tag}: mean since the last log", color=f"C{i}", linewidth=2)
    _scale(ax, values)
    _finish(ax, "LGM meta-loss (1 − cosine of probe gradients)", "update step", "meta-loss",
            legend=True)
    return fig


def _bars(ax, groups: list[str], series: list[tuple[str, list[float | None], list[float | None]]],
          ylabel: str, title: str) -> None:
    """Grouped bars: ``series`` = (label, means per group, stds per group); None = no result."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    top = 0.0
    for i, (label, means, stds) in enumerate(series):
        position = x - 0.4 + width * (i + 0.5)
        heights = [np.nan if m is None else m for m in means]
        errors = [0.0 if s is None else s for s in stds]
        bars = ax.bar(position, heights, width, yerr=errors, capsize=3, label=label,
                      color=f"C{i}", error_kw={"linewidth": 1})
        for bar, mean, error in zip(bars, means, errors):
            if mean is not None:   # the value above its error bar
                ax.annotate(f"{mean:.1f}", (bar.get_x() + bar.get_width() / 2, mean + error),
                            xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)
                top = max(top, mean + error)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    ax.grid(True, axis="y", alpha=0.3)


def _bar_legend(fig, ax, columns: int) -> None:
    """One legend for all panels, below them, so it covers no bar."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, 5),
               fontsize="small", frameon=False)


def mkdt_results(results: list[dict], rows: list[str], datasets: list[str],
                 fractions: list[str]) -> Figure | None:
    """Linear-probe top-1 per label fraction: groups = downstream datasets, bars = pre-training
    sets; mean ± population std over seeds."""
    if not results:
        return None
    cells = {(r["row"], r["dataset"], key): mkdt_tables.summarize(accs)
             for r in results for key, accs in r["accuracy"].items()}
    fig, axes = _figure(len(fractions), width=max(5.0, 1.2 * len(datasets) * max(len(rows), 2) / 2))
    for ax, key in zip(axes, fractions):
        series = [(mkdt_tables.ROW_LABELS.get(row, row),
                   [cells.get((row, d, key), {}).get("mean") for d in datasets],
                   [cells.get((row, d, key), {}).get("std") for d in datasets]) for row in rows]
        _bars(ax, datasets, series, "linear-probe top-1 (%)",
              f"{float(key) * 100:g}% of the labels")
    _bar_legend(fig, axes[0], len(rows))
    seeds = max(len(accs) for r in results for accs in r["accuracy"].values())
    fig.suptitle(f"MKDT evaluation: pre-train, then linear probe (mean ± std over {seeds} seeds)")
    return fig


def lgm_main(results: list[dict]) -> dict[str, dict[str, dict]]:
    """``{method: {probe backbone: figures}}`` with the probe backbone = the one the set was made
    for (random real sets pooled), as ``ddjax.lgm.tables.build_report``'s ``main`` table."""
    main: dict = {}
    pooled: dict = {}
    for r in results:
        group, target = r["group"], r["eval_backbone"]
        if group == "random":
            pool = pooled.setdefault(target, {"top1": [], "top5": []})
            pool["top1"] += r["top1"]
            both = r["top5"] is not None and pool["top5"] is not None
            pool["top5"] = pool["top5"] + r["top5"] if both else None
        elif group == "full" or r.get("source") == target:
            main.setdefault(group, {})[target] = lgm_tables.summarize(r["top1"], r["top5"])
    for target, pool in pooled.items():
        main.setdefault("random", {})[target] = lgm_tables.summarize(pool["top1"], pool["top5"])
    known = [group for group, _ in lgm_tables.ROWS if group in main]
    return {group: main[group] for group in known + [g for g in main if g not in known]}


def lgm_results(results: list[dict]) -> Figure | None:
    """Linear-probe top-1 (and top-5) per probe backbone: bars = LGM's set and the baselines."""
    if not results:
        return None
    main = lgm_main(results)
    backbones = list(dict.fromkeys(r["eval_backbone"] for r in results))
    labels = dict(lgm_tables.ROWS)
    methods = [(g, labels.get(g, g)) for g in main]
    metrics = ["top1"] + (["top5"] if any("top5_mean" in f for m in main.values()
                                          for f in m.values()) else [])
    fig, axes = _figure(len(metrics), width=max(5.0, 1.0 * len(backbones) * len(methods) / 2))
    for ax, metric in zip(axes, metrics):
        series = [(label, [main[g].get(b, {}).get(f"{metric}_mean") for b in backbones],
                   [main[g].get(b, {}).get(f"{metric}_std") for b in backbones])
                  for g, label in methods]
        _bars(ax, backbones, series, f"test {metric.replace('top', 'top-')} (%)",
              f"{metric.replace('top', 'Top-')} accuracy per probe backbone")
    _bar_legend(fig, axes[0], len(methods))
    fig.suptitle("LGM evaluation: linear probes on each set (mean ± std over seeds)")
    return fig
