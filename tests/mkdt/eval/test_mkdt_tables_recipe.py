"""experiments/mkdt_tables.py: each table's chain of stages, checked without running it."""

import importlib.util
import sys
from pathlib import Path

import pytest

from ddjax.cli import build_parser

RECIPE = Path(__file__).resolve().parents[3] / "experiments" / "mkdt_tables.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("mkdt_tables_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _commands(steps):
    return [s for s in steps if isinstance(s, list)]


@pytest.mark.parametrize("table", ["cifar10_2", "cifar100_2", "tiny_imagenet_2", "cifar10_5",
                                   "cifar100_5", "resnets"])
def test_every_command_of_every_table_parses(recipe, table, tmp_path):
    parser = build_parser()
    commands = _commands(recipe.plan(table, tmp_path / "w", "bt.pt", full=True))
    for command in commands:
        assert command[0] == "ddjax"
        parser.parse_args(command[1:])
    assert [c[1] for c in commands[:6]] == ["teacher", "represent", "experts", "select", "select",
                                            "distill"]
    assert "teacher.import_path=bt.pt" in commands[0]
    evals = [c for c in commands if c[1:3] == ["eval", "mkdt"]]
    assert evals and all(any("'full'" in a for a in c) for c in evals)


def test_ablation_and_architecture_tables_use_linked_sibling_workdirs(recipe, tmp_path):
    main = tmp_path / "w"
    steps = recipe.plan("cifar100_2", main)
    ablation = [c for c in _commands(steps) if "distill.init=random" in c]
    assert len(ablation) == 1 and ablation[0][ablation[0].index("--workdir") + 1] == f"{main}_random_init"
    links = [s for s in steps if isinstance(s, recipe.Link)]
    assert {link.name for link in links} == {"teacher", "represent", "experts", "select"}
    (main / "select").mkdir(parents=True)
    links[-1].apply()
    links[-1].apply()  # a second run keeps the link
    assert (tmp_path / "w_random_init" / "select").resolve() == (main / "select").resolve()
    evals = [c for c in _commands(recipe.plan("resnets", main)) if c[1:3] == ["eval", "mkdt"]]
    assert [c[-1] for c in evals] == ["mkdt_eval.model=resnet10", "mkdt_eval.model=resnet18"]
