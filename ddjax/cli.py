"""The ``ddjax`` command: the one place that parses arguments and turns errors into one line.

Subcommands import their implementation lazily, so ``ddjax --help`` and ``ddjax data info``
start quickly. Every stage command takes ``--config FILE`` (an ``experiments/*.py`` file),
``--workdir DIR`` (where its artifacts, checkpoints, resolved config and metrics go; rerunning
with the same workdir resumes) and any number of ``--set path.to.field=value`` overrides.
``ddjax run mkdt|lgm`` runs a method's stages one after the other in this process
(``ddjax.pipeline``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from ddjax.errors import DdjaxError


def _add_data_location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", default=None,
                        help="image-folder archive (.tar/.tar.gz or folder) or a folder of archives; "
                             "default: $DDJAX_ARCHIVE_DIR, else ../shared/data beside the repo")
    parser.add_argument("--data-dir", default=None,
                        help="where prepared TFDS datasets live; default: $DDJAX_DATA_DIR, "
                             "else ~/.cache/ddjax/tfds")


def _data_info(args: argparse.Namespace) -> None:
    from ddjax.data import dataset_info

    print(json.dumps(dataset_info(args.name, archive=args.archive, data_dir=args.data_dir)))


def _data_grid(args: argparse.Namespace) -> None:
    import numpy as np

    from ddjax.data import load_arrays
    from ddjax.viz import save_image_grid

    images, labels = load_arrays(args.name, args.split, archive=args.archive, data_dir=args.data_dir)
    rng = np.random.default_rng(args.seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[: args.per_class]
            for c in range(int(labels.max()) + 1)]
    picks = np.concatenate(rows)
    path = save_image_grid(images[picks], args.out, columns=args.per_class, scale=args.scale)
    print(json.dumps({"grid": str(path), "images": int(len(picks))}))


def _report(args: argparse.Namespace) -> None:
    from ddjax.report import write_report
    from ddjax.runlog import print_summary

    index = write_report(args.workdir)
    print_summary("report", args.workdir, {"html": index, "markdown": index.parent / "report.md"})


def _backbone(args: argparse.Namespace) -> None:
    from ddjax.backbones import commands

    commands.run(args)


# (command words, "module:function", stage directory name, help). The module also defines
# READS, the config fields the stage reads (sections or section.field; a dict by command word
# when commands share a directory), and optionally check_config(config), which
# rejects bad settings before they are recorded; the stage writes <workdir>/<directory>.
STAGE_COMMANDS = (
    (("teacher",), "ddjax.ssl.teacher_stage:run", "teacher",
     "train an SSL teacher (Barlow Twins / SimCLR) or import a PyTorch one; writes the teacher artifact"),
    (("represent",), "ddjax.mkdt.represent_stage:run", "represent",
     "the teacher's representations of the whole train split (MKDT's regression targets)"),
    (("experts",), "ddjax.mkdt.experts_stage:run", "experts",
     "train student experts on the real data and store their parameter trajectories"),
    (("select", "high-loss"), "ddjax.mkdt.select_stage:run_high_loss", "select",
     "the real images the experts fit worst after epoch 1 (MKDT's initial synthetic set)"),
    (("select", "random"), "ddjax.mkdt.select_stage:run_random", "select",
     "a seeded random subset of the same size (the baseline)"),
    (("distill", "mkdt"), "ddjax.mkdt.distill_stage:run", "distill",
     "MKDT: learn synthetic images, targets and lr by matching expert trajectories"),
    (("distill", "lgm"), "ddjax.lgm.distill_stage:run", "lgm",
     "LGM: distil images per class by linear gradient matching on frozen backbones"),
    (("eval", "mkdt"), "ddjax.mkdt.eval_stage:run", "mkdt_eval",
     "MKDT: pre-train fresh encoders on the distilled set and baselines, L-BFGS probes with few labels"),
    (("eval", "lgm"), "ddjax.lgm.eval_stage:run", "lgm_eval",
     "LGM: linear probes on the distilled sets and baselines, cross-model matrix, alignment"),
)


def stage_command(words) -> tuple[str, str, str]:
    """``(module:function, stage directory, help)`` of the stage command ``words``."""
    for entry_words, target, directory, help_text in STAGE_COMMANDS:
        if tuple(entry_words) == tuple(words):
            return target, directory, help_text
    raise KeyError(f"no stage command {' '.join(words)!r}")


def prepare_stage(words, full, command: str | None = None):
    """``(module, function, config, record file)`` of stage ``words`` on the loaded config
    ``full``: the fields it reads (one line naming a missing section), checked by its
    ``check_config``. Nothing is written and no device is used."""
    from ddjax.workdir import read_fields, stage_reads

    target, _, _ = stage_command(words)
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    reads, record = stage_reads(module.READS, words[-1])
    config = read_fields(full, reads, command or "`ddjax " + " ".join(words) + "`")
    if hasattr(module, "check_config"):  # refuse bad settings before they are recorded
        module.check_config(config)
    return module, function, config, record


def _run_stage(args: argparse.Namespace) -> None:
    from ddjax import mesh
    from ddjax.config import load_config
    from ddjax.workdir import open_stage

    mesh.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device use
    command = "ddjax " + " ".join(args.stage_words)
    full = load_config(args.config, args.set)
    module, function, config, record = prepare_stage(args.stage_words, full)
    # The layout is not recorded with the stage's settings: a run may resume on other devices.
    mesh.build(full.get("mesh"))
    with open_stage(args.stage_name, config, args.workdir, command, record) as stage:
        getattr(module, function)(stage)
    mesh.finish()


def _run_pipeline(args: argparse.Namespace) -> None:
    from ddjax.pipeline import run_pipeline

    run_pipeline(args.method, args.config, args.workdir, args.set, until=args.until,
                 process=(args.coordinator, args.num_processes, args.process_id))


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """One process of a multi-process run (jax.distributed); on a TPU pod or in a SLURM job they
    are found without flags. See docs/scaling.md."""
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="address of process 0's coordination service (multi-process runs)")
    parser.add_argument("--num-processes", type=int, default=None, metavar="N",
                        help="how many processes the run spans")
    parser.add_argument("--process-id", type=int, default=None, metavar="I",
                        help="this process's index, 0..N-1")


def _add_stage_commands(commands) -> None:
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, _, directory, help_text in STAGE_COMMANDS:
        parent = commands
        if len(words) == 2:
            if words[0] not in groups:
                group = commands.add_parser(words[0], help=f"{words[0]} stages")
                groups[words[0]] = group.add_subparsers(dest=f"{words[0]}_command", required=True,
                                                        metavar="ACTION")
            parent = groups[words[0]]
        stage = parent.add_parser(words[-1], help=help_text, description=help_text)
        stage.add_argument("--config", required=True, help="experiment config, e.g. experiments/smoke.py")
        stage.add_argument("--workdir", required=True,
                           help=f"pipeline directory; this stage writes <workdir>/{directory}")
        stage.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                           help="override a config field, e.g. --set experts.num_experts=4 (repeatable)")
        _add_process_flags(stage)
        stage.set_defaults(handler=_run_stage, stage_name=directory,
                           stage_words=words)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddjax", description="Dataset distillation for self-supervised learning (MKDT, LGM).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    info = data_commands.add_parser(
        "info", help="print one JSON object: splits with counts, classes, image shape "
                     "(prepares a local archive on first use)")
    info.add_argument("name", help="dataset name, e.g. cifar10")
    _add_data_location_flags(info)
    info.set_defaults(handler=_data_info)

    grid = data_commands.add_parser("grid", help="write a PNG grid of a few images per class")
    grid.add_argument("name")
    grid.add_argument("--out", required=True, help="PNG file to write")
    grid.add_argument("--split", default="train")
    grid.add_argument("--per-class", type=int, default=8)
    grid.add_argument("--scale", type=int, default=2, help="enlarge tiles this many times")
    grid.add_argument("--seed", type=int, default=0)
    _add_data_location_flags(grid)
    grid.set_defaults(handler=_data_grid)

    backbone = commands.add_parser("backbone", help="import and inspect frozen ViT backbones (DINOv2, CLIP, "
                                                    "EVA-02, MoCo v3, DINO)")
    backbone_commands = backbone.add_subparsers(dest="backbone_command", required=True, metavar="ACTION")
    imp = backbone_commands.add_parser("import", help="convert a local official weights file (.pth/.pt/"
                                                      ".safetensors/.npz) once into ddjax's format")
    imp.add_argument("name", help="backbone name, e.g. dinov2_vitb14 (`ddjax backbone info` lists them)")
    imp.add_argument("path", help="the weights file")
    imp.add_argument("--out", default=None, help="directory to write; default $DDJAX_BACKBONE_DIR/NAME, "
                                                 "else ~/.cache/ddjax/backbones/NAME")
    about = backbone_commands.add_parser("info", help="print one JSON object: architecture, feature, "
                                                      "normalisation, imported weights (no NAME: all names)")
    about.add_argument("name", nargs="?", default=None)
    for action in (imp, about):
        action.set_defaults(handler=_backbone)

    report = commands.add_parser("report", help="write W/report/: figures of every stage's metrics, "
                                                 "the result tables as charts, grids of the distilled sets")
    report.add_argument("workdir", help="a pipeline directory (--workdir of the stages)")
    report.set_defaults(handler=_report)

    from ddjax.pipeline import CHAINS, until_choices

    run = commands.add_parser(
        "run", help="a method's whole chain of stages: each skipped when its artifacts are "
                    "complete, resumed when interrupted; ends with the result table and the report",
        description="Run every stage of a method in order, in this process: mkdt = teacher, "
                    "represent, experts, select high-loss, select random, distill mkdt, eval mkdt; "
                    "lgm = teacher (when a backbone is the workdir's teacher), distill lgm, eval "
                    "lgm. Rerun the same command to resume.")
    run.add_argument("method", choices=sorted(CHAINS))
    run.add_argument("--config", required=True, help="experiment config, e.g. experiments/smoke.py "
                                                     "(mkdt) or experiments/smoke.py:lgm (lgm)")
    run.add_argument("--workdir", required=True, help="pipeline directory; each stage writes "
                                                      "<workdir>/<stage>, the report <workdir>/report")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a config field for every stage (repeatable)")
    run.add_argument("--until", default=None, metavar="STAGE", choices=until_choices(),
                     help="stop after this stage (e.g. distill, select-random)")
    _add_process_flags(run)
    run.set_defaults(handler=_run_pipeline)

    _add_stage_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DdjaxError as err:
        print(f"ddjax: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        if "jax" in sys.modules:  # a dead peer: its one line, not this traceback
            from ddjax import mesh

            mesh.await_peer_verdict()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
