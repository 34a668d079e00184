"""Whether a run is smoke-sized: its numbers check the plumbing and measure nothing. One rule,
read from the settings the workdir's stages recorded, shared by the result tables (which say it
above their numbers) and the report (docs/report.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

# Smoke-sized: training on fewer than SMOKE_TRAIN_IMAGES images, or distilling for fewer than
# SMOKE_ITERATIONS iterations.
SMOKE_TRAIN_IMAGES = 10_000
SMOKE_ITERATIONS = 50
# The stage directories of each method (a workdir may hold both methods' stages).
METHOD_STAGES = {"mkdt": ("teacher", "represent", "experts", "select", "distill", "mkdt_eval"),
                 "lgm": ("teacher", "lgm", "lgm_eval")}


def recorded_configs(directory: Path) -> dict[str, dict]:
    """{file name: settings} of every ``config*.json`` a stage recorded in ``directory``."""
    found = {}
    for path in sorted(Path(directory).glob("config*.json")):
        try:
            found[path.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def smoke_reasons(configs: Iterable[dict]) -> list[str]:
    """Why a run with these recorded settings is smoke-sized, or [] when it is not."""
    reasons: list[str] = []
    for config in configs:
        sections = {name: value for name, value in config.items() if isinstance(value, dict)}
        for section in ("data", "teacher"):
            subset = sections.get(section, {}).get("train_subset") or 0
            if 0 < subset < SMOKE_TRAIN_IMAGES:
                reasons.append(f"{section}.train_subset = {subset:,} < {SMOKE_TRAIN_IMAGES:,}")
        for section in ("distill", "lgm"):
            iterations = sections.get(section, {}).get("iterations")
            if isinstance(iterations, int) and iterations < SMOKE_ITERATIONS:
                reasons.append(f"{section}.iterations = {iterations} < {SMOKE_ITERATIONS}")
    return list(dict.fromkeys(reasons))


def scale_note(workdir: str | Path, method: str) -> str | None:
    """What ``method``'s result table says first about the run in ``workdir``: at smoke sizes,
    that its numbers check the plumbing and are not a measurement; None at a real scale."""
    configs = [config for name in METHOD_STAGES[method]
               for config in recorded_configs(Path(workdir) / name).values()]
    return smoke_sentence(smoke_reasons(configs))


def smoke_sentence(reasons: list[str]) -> str | None:
    """The sentence said above a smoke-sized run's numbers (None when there are no reasons)."""
    if not reasons:
        return None
    return (f"Smoke-sized run ({'; '.join(reasons)}): these numbers check the plumbing and are "
            "not a measurement.")
