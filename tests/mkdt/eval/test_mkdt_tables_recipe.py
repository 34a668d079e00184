"""experiments/mkdt_tables.py: each table's `ddjax run mkdt` commands, checked without running them."""

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


def _workdir(command):
    return command[command.index("--workdir") + 1]


@pytest.mark.parametrize("table", ["cifar10_2", "cifar100_2", "tiny_imagenet_2", "cifar10_5",
                                   "cifar100_5", "resnets"])
def test_every_command_of_every_table_parses(recipe, table, tmp_path):
    parser = build_parser()
    commands = _commands(recipe.plan(table, tmp_path / "w", "bt.pt", full=True))
    for command in commands:
        assert command[:3] == ["ddjax", "run", "mkdt"]
        args = parser.parse_args(command[1:])
        assert args.method == "mkdt"
        assert "teacher.import_path=bt.pt" in args.set  # every workdir's teacher is the same
    # One command for a table of one setting; the main workdir's chain comes first.
    assert _workdir(commands[0]) == str(tmp_path / "w")
    assert len(commands) == 1 or "--until" in commands[0]
    evals = [c for c in commands if "--until" not in c]
    assert evals and all(any("'full'" in a for a in c) for c in evals)


def test_ablation_and_architecture_tables_use_linked_sibling_workdirs(recipe, tmp_path):
    main = tmp_path / "w"
    steps = recipe.plan("cifar100_2", main)
    ablation = [c for c in _commands(steps) if "distill.init=random" in c]
    assert len(ablation) == 1 and _workdir(ablation[0]) == f"{main}_random_init"
    assert ablation[0][ablation[0].index("--until") + 1] == "distill"
    links = [s for s in steps if isinstance(s, recipe.Link)]
    assert {link.name for link in links} == {"teacher", "represent", "experts", "select"}
    (main / "select").mkdir(parents=True)
    links[-1].apply()
    links[-1].apply()  # a second run keeps the link
    assert (tmp_path / "w_random_init" / "select").resolve() == (main / "select").resolve()
    last = _commands(steps)[-1]
    assert _workdir(last) == str(main) and any("mkdt_random_init=" in a for a in last)
    evals = [c for c in _commands(recipe.plan("resnets", main)) if "--until" not in c]
    assert [c[-1] for c in evals] == ["mkdt_eval.model=resnet10", "mkdt_eval.model=resnet18"]
