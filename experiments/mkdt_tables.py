"""The ``ddjax run mkdt`` commands behind each of MKDT's result tables, at the paper's settings
(``experiments/mkdt_paper.py``). A table of one setting is one command,

    ddjax run mkdt --config experiments/mkdt_paper.py:cifar10_2 --workdir runs/c10_2 \
        --set teacher.import_path=bt_c10.pt

and this script adds the tables that need more than one workdir:

    python experiments/mkdt_tables.py cifar100_2 --workdir runs/c100_2 --teacher-import bt_c100.pt
    python experiments/mkdt_tables.py resnets --workdir runs/c100_2 --dry-run   # print, run nothing

Tables (docs/mkdt.md#evaluation): ``cifar10_2``, ``cifar100_2`` (with the random-init ablation),
``tiny_imagenet_2``, ``cifar10_5``, ``cifar100_5`` (larger sets), ``resnets`` (the CIFAR-100 2% set
pre-training ResNet-10 and ResNet-18). Every command is printed before it runs; ``ddjax run``
skips what a workdir already holds and resumes what was stopped, so rerunning this script
continues a stopped chain. Sibling workdirs (``<workdir>_random_init``, ``<workdir>_resnet10``,
...) link the stages they share with the main one instead of recomputing them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

TABLES = {
    "cifar10_2": {"setting": "cifar10_2"},
    "cifar100_2": {"setting": "cifar100_2", "random_init": True,
                   "rows": ("no_pretrain", "random", "high_loss", "mkdt")},
    "tiny_imagenet_2": {"setting": "tiny_imagenet_2"},
    "cifar10_5": {"setting": "cifar10_5"},
    "cifar100_5": {"setting": "cifar100_5"},
    "resnets": {"setting": "cifar100_2", "models": ("resnet10", "resnet18")},
}
CONFIG = Path(__file__).with_name("mkdt_paper.py")
# What a sibling workdir links from the main one: every stage before the one it runs itself.
BEFORE_DISTILL = ("teacher", "represent", "experts", "select")


def _run(config: str, workdir: Path, settings=(), until: str | None = None) -> list[str]:
    """``ddjax run mkdt`` on ``workdir`` (up to and including the stage ``until``)."""
    command = ["ddjax", "run", "mkdt", "--config", config, "--workdir", str(workdir)]
    if until:
        command += ["--until", until]
    for item in settings:
        command += ["--set", item]
    return command


@dataclasses.dataclass(frozen=True)
class Link:
    """Make ``sibling/name`` a link to ``main/name`` (kept if it is already there)."""

    main: Path
    sibling: Path
    name: str

    def __str__(self) -> str:
        return f"$ ln -s {shlex.quote(str(self.main.resolve() / self.name))} {self.sibling / self.name}"

    def apply(self) -> None:
        link = self.sibling / self.name
        if link.is_symlink() or link.exists():
            return
        self.sibling.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.main.resolve() / self.name, target_is_directory=True)


def _links(main: Path, sibling: Path, stages) -> list[Link]:
    return [Link(main, sibling, name) for name in stages]


def plan(table: str, workdir: Path, teacher_import: str | None = None,
         full: bool = False) -> list[list[str] | Link]:
    """The steps of ``table`` in order: ``ddjax run mkdt`` commands (argument lists) and links."""
    spec = TABLES[table]
    config = f"{CONFIG}:{spec['setting']}"
    # Settings every workdir of the table shares (a linked stage is checked against them).
    shared = [f"teacher.import_path={teacher_import}"] if teacher_import else []
    rows = list(spec.get("rows", ("no_pretrain", "random", "mkdt"))) + (["full"] if full else [])
    eval_settings = [f"mkdt_eval.rows={tuple(rows)!r}"]
    models = spec.get("models", ())
    steps: list[list[str] | Link] = []
    if spec.get("random_init") or models:  # the shared stages first, without the main evaluation
        steps.append(_run(config, workdir, shared, until="distill"))
    if spec.get("random_init"):
        ablation = Path(f"{workdir}_random_init")
        steps += _links(workdir, ablation, BEFORE_DISTILL)
        steps.append(_run(config, ablation, shared + ["distill.init=random"], until="distill"))
        eval_settings.append(f"mkdt_eval.extra_synsets=('mkdt_random_init={ablation}',)")
    for model in models:
        sibling = Path(f"{workdir}_{model}")
        steps += _links(workdir, sibling, BEFORE_DISTILL + ("distill",))
        steps.append(_run(config, sibling, shared + eval_settings + [f"mkdt_eval.model={model}"]))
    if not models:
        steps.append(_run(config, workdir, shared + eval_settings))
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--teacher-import", help="a PyTorch Barlow Twins ResNet-18 state dict "
                        "(KRR-ST's checkpoint, as MKDT used); without it the teacher stage trains one")
    parser.add_argument("--full", action="store_true", help="also pre-train on the full data")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    for step in plan(args.table, args.workdir, args.teacher_import, args.full):
        if isinstance(step, Link):
            print(step, flush=True)
            if not args.dry_run:
                step.apply()
            continue
        print("$ " + shlex.join(step), flush=True)
        if not args.dry_run and subprocess.call(step) != 0:
            print(f"stopped: {shlex.join(step)} failed; fix it and rerun this script to continue",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
