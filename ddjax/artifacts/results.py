"""Evaluation artifacts: each (set, evaluation dataset or backbone) result as soon as it is known,
and MKDT's pre-trained encoders, so a rerun continues where a stopped one ended. The result
tables (``results.json``, ``tables.md``) are rebuilt from these on every run.
"""

from __future__ import annotations

from pathlib import Path

from ddjax.artifacts.base import Artifact

MKDT_ENCODERS = Artifact("pre-trained encoders", "mkdt_eval/encoders/{row}", "ddjax eval mkdt")
MKDT_RESULT = Artifact("MKDT evaluation result", "mkdt_eval/results/{row}__{dataset}",
                       "ddjax eval mkdt")
LGM_RESULT = Artifact("LGM evaluation result", "lgm_eval/results/{name}__{backbone}",
                      "ddjax eval lgm")
LGM_ALIGNMENT = Artifact("backbone alignment", "lgm_eval/results/alignment", "ddjax eval lgm",
                         identity=("tags",))


def write_result(artifact: Artifact, directory: str | Path, result: dict) -> dict:
    """Write a result (a JSON-compatible dict) as a meta-only artifact; returns it."""
    artifact.write(directory, {"result": result})
    return result


def read_result(artifact: Artifact, directory: str | Path) -> dict | None:
    """The result at ``directory``, or None when it is not complete yet."""
    if not artifact.is_complete(directory):
        return None
    return artifact.read_meta(directory)["result"]
