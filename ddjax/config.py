"""Experiment configs: Python files with ``get_config()`` returning an ``ml_collections.ConfigDict``.

A config file under ``experiments/`` describes a whole pipeline (one section per stage); the
command line overrides single fields with ``--set path.to.field=value``. The resolved config is
written as JSON next to a stage's outputs, and a rerun in the same directory must resolve to the
same config, so a resumed run can never silently continue under different settings.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Iterable

import ml_collections

from ddjax.errors import DdjaxError

CONFIG_FILE_NAME = "config.json"
# Layout choices, not settings: they change where data live and how they are read, not what a
# stage computes, so they are left out of the recorded config and a run may resume with other
# values (the mesh is not in any stage's fields at all).
LAYOUT_FIELDS = ("data.stream",)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a Python file and apply ``key=value`` overrides.

    ``file.py:ARG`` calls ``get_config("ARG")`` (the ml_collections convention), so one file can
    hold several settings, e.g. ``experiments/mkdt_paper.py:cifar100_5``.
    """
    path, argument = Path(path), None
    if not path.is_file() and ":" in str(path):
        head, argument = str(path).rsplit(":", 1)
        path = Path(head)
    if not path.is_file():
        raise DdjaxError(f"config file {path} does not exist; pass --config with a file from experiments/")
    spec = importlib.util.spec_from_file_location(f"ddjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # any error in user code: report it on one line
        raise DdjaxError(f"config file {path} failed to load: {type(err).__name__}: {err}") from err
    if not hasattr(module, "get_config"):
        raise DdjaxError(f"config file {path} defines no get_config(); add one returning a ConfigDict")
    try:
        config = module.get_config() if argument is None else module.get_config(argument)
    except DdjaxError:
        raise
    except Exception as err:
        raise DdjaxError(f"get_config({argument or ''}) of {path} failed: {type(err).__name__}: {err}") from err
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    for item in overrides:
        apply_override(config, item)
    return config


def parse_value(text: str):
    """A Python literal (number, bool, None, tuple, list, quoted string), else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set one field from ``dotted.path=value``; unknown fields and wrong types are errors."""
    if "=" not in item:
        raise DdjaxError(f"override {item!r} is not of the form path.to.field=value")
    dotted, text = item.split("=", 1)
    *parents, leaf = dotted.strip().split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            where = ".".join(parents[: i + 1])
            raise DdjaxError(f"override {dotted!r}: the config has no section {where!r}")
        node = node[name]
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise DdjaxError(f"override {dotted!r}: no field {leaf!r} here; known fields: {known}")
    value = parse_value(text)
    try:
        node[leaf] = value
    except TypeError as err:
        raise DdjaxError(f"override {dotted!r}={text!r}: {err}") from err


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """A plain JSON-compatible dict (tuples become lists) for saving and comparing."""
    return json.loads(config.to_json())


def record_config(directory: Path, config: ml_collections.ConfigDict,
                  name: str = CONFIG_FILE_NAME) -> None:
    """Write the resolved config into ``directory``, or check it against the one already there.

    A rerun in the same directory resumes, so its config must be the one the run started with;
    a mismatch is an error naming the differing fields rather than a silent overwrite. Fields
    the record lacks (added to ddjax after the run started; new fields default to the old
    behaviour) are accepted and added to the record. :data:`LAYOUT_FIELDS` are not recorded.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    current = _without_layout(config_to_dict(config))
    if target.exists():
        previous = json.loads(target.read_text())
        changed = sorted(_differences(previous, current))
        if changed:
            raise DdjaxError(
                f"{target} was written by a run with different settings ({', '.join(changed)}); "
                "use a new --workdir, or rerun with the original settings to resume"
            )
        if previous == current:
            return
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(target)


def _without_layout(fields: dict) -> dict:
    for dotted in LAYOUT_FIELDS:
        section, field = dotted.split(".")
        if isinstance(fields.get(section), dict):
            fields[section].pop(field, None)
    return fields


_ABSENT = object()


def _differences(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ; a field only ``new`` has is not a difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if key in old:
                out += _differences(old[key], new.get(key, _ABSENT), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
