"""``ddjax run mkdt|lgm``: a method's whole chain of stages in one command.

The stages are the ones of ``ddjax.cli.STAGE_COMMANDS``, run in this process one after the other
exactly as their own commands run them (the same config fields, checks, lock and recorded
settings). Before anything runs, every stage's config section is read and checked, so a config
that lacks one is one line. A stage whose artifacts are complete for this config is skipped
(its recorded settings are still checked: a rerun with other settings is refused as the stage's
own command refuses it); an interrupted stage resumes from its checkpoints and artifacts when
the command is run again. The chain ends by printing the result table (the evaluation's
``tables.md``) and writing the report (``ddjax.report``). Progress: one line per stage on stderr;
stdout: the stages' own output (their one-line summaries, the table) and, last, one JSON line
naming each stage's status (``ran`` or ``skipped``) and seconds, the report and the table.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ddjax.errors import DdjaxError

# Each method's stages in order (command words of ``STAGE_COMMANDS``).
CHAINS = {
    "mkdt": (("teacher",), ("represent",), ("experts",), ("select", "high-loss"),
             ("select", "random"), ("distill", "mkdt"), ("eval", "mkdt")),
    "lgm": (("teacher",), ("distill", "lgm"), ("eval", "lgm")),
}
# The stage directory holding each method's result table.
TABLES = {"mkdt": "mkdt_eval/tables.md", "lgm": "lgm_eval/tables.md"}


def stage_key(words) -> str:
    """A stage's name for ``--until`` and the summary: ``select-high-loss``, ``distill-mkdt``."""
    return "-".join(words)


def until_choices() -> list[str]:
    """What ``--until`` accepts: every stage key and every first word (``distill``, ``select``)."""
    keys = {stage_key(w) for chain in CHAINS.values() for w in chain}
    return sorted(keys | {w[0] for chain in CHAINS.values() for w in chain})


@dataclasses.dataclass
class PlannedStage:
    words: tuple[str, ...]
    directory: str
    module: Any
    function: str
    config: Any
    record: str

    @property
    def command(self) -> str:
        return "ddjax " + " ".join(self.words)


# ------------------------------------------------------------------ which stages a chain needs


def _lgm_uses_own_teacher(full, workdir: Path) -> bool:
    """True when a backbone of ``lgm.backbones`` or ``lgm_eval.backbones`` is this workdir's
    teacher (the default, an empty list, is)."""
    from ddjax.artifacts.teacher import TEACHER
    from ddjax.lgm.backbones import backbone_entries

    own = TEACHER.locate(workdir).resolve()
    specs = [spec for tag, spec in backbone_entries(full.lgm.backbones, workdir)]
    if full.get("lgm_eval") is not None and full.lgm_eval.get("backbones"):
        specs += [spec for tag, spec in backbone_entries(full.lgm_eval.backbones, workdir)]
    for spec in specs:
        family, _, argument = spec.partition(":")
        if family == "ddjax" and argument:
            path = Path(argument)
            if path.resolve() == own or (path / "encoder").resolve() == own:
                return True
    return False


def _needed(method: str, words: tuple[str, ...], full, workdir: Path) -> bool:
    """Whether the chain runs this stage: MKDT's teacher and representations only when the
    config does not take them from elsewhere; LGM's teacher only when a backbone is it."""
    representations = (full.get("experts") or {}).get("representations")
    if method == "mkdt" and words == ("teacher",):
        return not (representations or (full.get("represent") or {}).get("teacher"))
    if method == "mkdt" and words == ("represent",):
        return not representations
    if method == "lgm" and words == ("teacher",):
        return _lgm_uses_own_teacher(full, workdir)
    return True


# ------------------------------------------------------------------ completeness, from artifacts


def _selections_complete(method: str) -> Callable:
    def complete(config, workdir: Path) -> bool:
        from ddjax.artifacts.selection import SELECTION

        return all(SELECTION.is_complete(SELECTION.locate(workdir, method=method, percent=p))
                   for p in config.select.percents)
    return complete


def _teacher_complete(config, workdir: Path) -> bool:
    from ddjax.artifacts.teacher import TEACHER

    return TEACHER.is_complete(TEACHER.locate(workdir))


def _represent_complete(config, workdir: Path) -> bool:
    from ddjax.artifacts.representations import REPRESENTATIONS

    return REPRESENTATIONS.is_complete(REPRESENTATIONS.locate(workdir))


def _experts_complete(config, workdir: Path) -> bool:
    from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore

    root = TRAJECTORIES.locate(workdir)
    if not TRAJECTORIES.is_complete(root):
        return False
    done = set(TrajectoryStore.open(root).complete_experts())
    return set(range(config.experts.num_experts)) <= done


def _distill_mkdt_complete(config, workdir: Path) -> bool:
    from ddjax.artifacts.synset import SYNSET

    return SYNSET.is_complete(SYNSET.locate(workdir, iteration=config.distill.iterations))


def _distill_lgm_complete(config, workdir: Path) -> bool:
    from ddjax.artifacts.image_set import LGM_SET
    from ddjax.lgm.backbones import backbone_entries

    return all(LGM_SET.is_complete(LGM_SET.locate(workdir, tag=tag))
               for tag, _ in backbone_entries(config.lgm.backbones, workdir))


COMPLETE: dict[tuple[str, ...], Callable] = {
    ("teacher",): _teacher_complete,
    ("represent",): _represent_complete,
    ("experts",): _experts_complete,
    ("select", "high-loss"): _selections_complete("high_loss"),
    ("select", "random"): _selections_complete("random"),
    ("distill", "mkdt"): _distill_mkdt_complete,
    ("distill", "lgm"): _distill_lgm_complete,
}


def is_complete(stage: PlannedStage, workdir: Path) -> bool:
    """True when ``stage``'s artifacts for its config are all there: running it would redo
    nothing (read through ``ddjax.artifacts``; the evaluations answer for themselves)."""
    check = COMPLETE.get(stage.words)
    try:
        if check is not None:
            return bool(check(stage.config, workdir))
        return bool(stage.module.is_complete(stage.config, workdir))
    except DdjaxError:  # an unreadable artifact: the stage itself says what is wrong
        return False


# ------------------------------------------------------------------ the run


def plan(method: str, full, workdir: Path, until: str | None = None) -> list[PlannedStage]:
    """The stages ``ddjax run METHOD`` runs, each with its checked config; every missing
    section or bad setting is found here, before anything runs."""
    from ddjax.cli import prepare_stage, stage_command

    if method not in CHAINS:
        raise DdjaxError(f"unknown method {method!r}; use one of {', '.join(CHAINS)}")
    chain = list(CHAINS[method])
    if until is not None:
        last = [i for i, words in enumerate(chain)
                if stage_key(words) == until or words[0] == until]
        if not last:
            raise DdjaxError(f"--until {until!r} names no stage of `ddjax run {method}`; use one "
                             f"of {', '.join(stage_key(w) for w in chain)}")
        chain = chain[:last[-1] + 1]
    prepared = []
    for words in chain:
        module, function, config, record = prepare_stage(
            words, full, f"`ddjax run {method}` (its stage `ddjax {' '.join(words)}`)")
        prepared.append(PlannedStage(words, stage_command(words)[1], module, function, config,
                                     record))
    return [stage for stage in prepared if _needed(method, stage.words, full, workdir)]


def _say(message: str) -> None:
    print(f"ddjax run: {message}", file=sys.stderr, flush=True)


def run_pipeline(method: str, config_path: str, workdir: str | Path, overrides=(), *,
                 until: str | None = None, process=(None, None, None)) -> dict:
    """Run (or skip, or resume) every stage of ``method``'s chain, print the result table,
    write the report; returns the summary printed last on stdout."""
    from ddjax import mesh
    from ddjax.config import load_config
    from ddjax.runlog import print_summary
    from ddjax.workdir import open_stage

    mesh.initialize(*process)  # before any device use
    started = time.perf_counter()
    workdir = Path(workdir)
    full = load_config(config_path, overrides)
    stages = plan(method, full, workdir, until)
    mesh.build(full.get("mesh"))
    statuses: dict[str, dict] = {}
    for i, stage in enumerate(stages, 1):
        where = f"stage {i}/{len(stages)} {' '.join(stage.words)}"
        begun = time.perf_counter()
        done = is_complete(stage, workdir)
        _say(f"{where}: complete, skipped" if done else f"{where} ...")
        try:
            # Opening a skipped stage still checks its recorded settings against this config.
            with open_stage(stage.directory, stage.config, workdir, stage.command,
                            stage.record) as opened:
                if not done:
                    getattr(stage.module, stage.function)(opened)
        except KeyboardInterrupt:
            _say(f"interrupted in {where}; run the same command again to resume")
            raise
        except DdjaxError as err:
            raise DdjaxError(f"{where} (`{stage.command}`): {err}") from err
        statuses[" ".join(stage.words)] = {"status": "skipped" if done else "ran",
                                           "seconds": round(time.perf_counter() - begun, 1)}
    tables = workdir / TABLES[method]
    eval_stage = stages[-1] if stages and stages[-1].words[0] == "eval" else None
    if eval_stage is not None and statuses[" ".join(eval_stage.words)]["status"] == "skipped" \
            and tables.exists():
        print(tables.read_text().rstrip(), flush=True)  # a stage that ran printed it already
    report = None
    if mesh.is_primary():
        from ddjax.report import write_report

        report = write_report(workdir)
        _say(f"report: {report}")
    mesh.barrier("ddjax run report")
    summary = print_summary(
        f"run {method}", workdir.absolute(),
        {"report": report, "tables": tables.absolute() if tables.exists() else None},
        stages=statuses, seconds=round(time.perf_counter() - started, 1))
    mesh.finish()
    return summary
