"""What a workdir holds, read for the report: each stage's recorded config and metrics, the result
artifacts and the saved image sets. Everything is read through ``ddjax.artifacts`` (and the
metrics log); nothing is written, and a stage that has not run is simply absent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ddjax.artifacts import teacher as teacher_artifact
from ddjax.artifacts.image_set import LGM_SET, read_image_set
from ddjax.artifacts.representations import REPRESENTATIONS
from ddjax.artifacts.results import LGM_ALIGNMENT, LGM_RESULT, MKDT_RESULT, read_result
from ddjax.artifacts.selection import SELECTION
from ddjax.artifacts.synset import SYNSET, read_synset
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.errors import DdjaxError
from ddjax.runlog import MetricsLog
from ddjax.smoke import recorded_configs, smoke_reasons

# Stage directories in pipeline order, with the command that fills each.
STAGES = {"teacher": "ddjax teacher", "represent": "ddjax represent", "experts": "ddjax experts",
          "select": "ddjax select high-loss|random", "distill": "ddjax distill mkdt",
          "mkdt_eval": "ddjax eval mkdt", "lgm": "ddjax distill lgm", "lgm_eval": "ddjax eval lgm"}
# At most this many saved MKDT sets are shown (the first, the last, evenly spaced between).
MAX_SYNSET_GRIDS = 4


@dataclasses.dataclass
class StageData:
    name: str
    directory: Path
    configs: dict[str, dict]            # file name -> recorded config
    records: list[dict]                 # metrics.jsonl

    @property
    def config(self) -> dict:
        """The stage's fields from all its recorded configs (``select`` records one per command)."""
        merged: dict = {}
        for config in self.configs.values():
            for key, value in config.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
        return merged


@dataclasses.dataclass
class ImageSet:
    """A set to show: images in [0, 1], the class name of each (None when unknown)."""

    title: str
    images: np.ndarray
    names: list[str] | None
    note: str = ""


@dataclasses.dataclass
class Run:
    workdir: Path
    stages: dict[str, StageData]
    artifacts: dict[str, str]                       # stage -> what its artifacts say, one line
    mkdt_results: list[dict]
    lgm_results: list[dict]
    lgm_alignment: dict | None
    mkdt_synsets: list[tuple[int, Path]]            # (iteration, directory), shown ones
    mkdt_synsets_saved: int
    lgm_sets: list[tuple[str, Path]]                # (backbone tag, directory)
    smoke: list[str]                                # why the run is smoke-sized; [] if not


def read_stage(workdir: Path, name: str) -> StageData | None:
    """A stage's recorded configs and metrics; None when it has not run here."""
    directory = workdir / name
    configs = recorded_configs(directory) if directory.is_dir() else {}
    records = MetricsLog(directory, name, primary=False).read()
    if not configs and not records:
        return None
    return StageData(name, directory, configs, records)


def _results(artifact, workdir: Path) -> list[dict]:
    parent = artifact.locate(workdir, row="x", dataset="x", name="x", backbone="x").parent
    return [r for r in (read_result(artifact, p) for p in artifact.complete_under(parent, "*__*"))
            if r is not None]


def _shown_iterations(count: int) -> list[int]:
    if count <= MAX_SYNSET_GRIDS:
        return list(range(count))
    last = MAX_SYNSET_GRIDS - 1
    return sorted({round(i * (count - 1) / last) for i in range(MAX_SYNSET_GRIDS)})


def _artifact_lines(workdir: Path, stages: dict[str, StageData], synsets: list[Path],
                    lgm_sets: list[tuple[str, Path]], mkdt_results: list,
                    lgm_results: list) -> dict:
    lines = {}
    if "teacher" in stages:
        if teacher_artifact.is_complete(workdir / "teacher"):
            meta = teacher_artifact.read_meta(workdir / "teacher")
            lines["teacher"] = (f"encoder complete: {meta.get('model')}, "
                                f"{meta.get('feature_dim')}-d features, k-NN accuracy "
                                f"{meta.get('knn_accuracy')}")
        else:
            lines["teacher"] = "encoder not complete"
    if "represent" in stages:
        directory = REPRESENTATIONS.locate(workdir)
        if REPRESENTATIONS.is_complete(directory):
            meta = REPRESENTATIONS.read_meta(directory)
            lines["represent"] = f"complete: {meta.get('n')} x {meta.get('d')} representations"
        else:
            lines["represent"] = "representations not complete"
    if "select" in stages:
        found = SELECTION.complete_under(SELECTION.locate(workdir, method="x", percent=1).parent)
        lines["select"] = ", ".join(p.name for p in found) or "no complete selection"
    if "experts" in stages:
        root = TRAJECTORIES.locate(workdir)
        if TRAJECTORIES.is_complete(root):
            store = TrajectoryStore.open(root)
            lines["experts"] = (f"{len(store.complete_experts())} complete experts of "
                                f"{store.meta.get('epochs')} epochs")
        else:
            lines["experts"] = "no trajectory store yet"
    if "distill" in stages:
        lines["distill"] = (f"{len(synsets)} saved sets (latest {synsets[-1].name})" if synsets
                            else "no saved set yet")
    if "lgm" in stages:
        lines["lgm"] = (f"sets for {', '.join(tag for tag, _ in lgm_sets)}" if lgm_sets
                        else "no complete set yet")
    if "mkdt_eval" in stages:
        lines["mkdt_eval"] = f"{len(mkdt_results)} (row, dataset) results"
    if "lgm_eval" in stages:
        lines["lgm_eval"] = f"{len(lgm_results)} (set, backbone) results"
    return lines


def collect(workdir: str | Path) -> Run:
    """Read ``workdir``; a DdjaxError naming what to run when it holds no stage at all."""
    workdir = Path(workdir).absolute()
    stages = {name: s for name in STAGES if (s := read_stage(workdir, name)) is not None}
    if not stages:
        raise DdjaxError(f"{workdir} holds no ddjax stage output (no config.json or metrics.jsonl "
                         f"in any of {', '.join(s + '/' for s in STAGES)}); run a stage there "
                         "first, e.g. `ddjax teacher --config experiments/smoke.py --workdir "
                         f"{workdir}`")
    synsets = SYNSET.complete_under(SYNSET.locate(workdir, iteration=0).parent, "iter_*")
    shown = [synsets[i] for i in _shown_iterations(len(synsets))]
    lgm_sets = []
    if "lgm" in stages:
        for tag_dir in sorted(p for p in (workdir / "lgm").iterdir() if p.is_dir()):
            directory = LGM_SET.locate(workdir, tag=tag_dir.name)
            if LGM_SET.is_complete(directory):
                lgm_sets.append((tag_dir.name, directory))
    mkdt_results = _results(MKDT_RESULT, workdir)
    lgm_results = _results(LGM_RESULT, workdir)
    alignment_dir = LGM_ALIGNMENT.locate(workdir)
    alignment = (LGM_ALIGNMENT.read_meta(alignment_dir)["result"]
                 if LGM_ALIGNMENT.is_complete(alignment_dir) else None)
    return Run(workdir=workdir, stages=stages,
               artifacts=_artifact_lines(workdir, stages, synsets, lgm_sets, mkdt_results,
                                         lgm_results),
               mkdt_results=mkdt_results, lgm_results=lgm_results, lgm_alignment=alignment,
               mkdt_synsets=[(int(SYNSET.read_meta(p).get("iteration", -1)), p) for p in shown],
               mkdt_synsets_saved=len(synsets), lgm_sets=lgm_sets,
               smoke=smoke_reasons(s.config for s in stages.values()))


def train_labels(data: dict, rows: np.ndarray) -> np.ndarray:
    """Labels of ``rows`` of the configured train split (``data``: a recorded ``data`` section;
    rows index the split after ``train_subset``, as every stage sees it), reading only those
    records."""
    from ddjax.data.sources import local_unavailable_reason, open_split
    from ddjax.data.subsets import random_subset

    where = {"archive": data.get("archive") or None, "data_dir": data.get("data_dir") or None}
    reason = local_unavailable_reason(data["name"], **where)
    if reason is not None:
        raise DdjaxError(reason)
    source = open_split(data["name"], "train", **where)
    keep = data.get("train_subset") or 0
    positions = np.asarray(rows, np.int64)
    if keep:  # the subset ddjax.data.pipeline.load_split takes
        positions = random_subset(len(source), keep, seed=0)[positions]
    return np.array([int(r["label"]) for r in source.__getitems__(positions.tolist())], np.int64)


def class_names(data: dict) -> tuple[str, ...] | None:
    from ddjax.data.sources import spec_for

    spec = spec_for(data["name"], archive=data.get("archive") or None,
                    data_dir=data.get("data_dir") or None)
    return spec.class_names


def mkdt_image_set(run: Run, iteration: int, directory: Path) -> ImageSet:
    """A saved MKDT set with its tiles' class names: the set starts from real train images, the
    selection indices in its meta (``init_indices``) give their labels."""
    arrays, meta = read_synset(directory)
    pixels = np.asarray(arrays["pixels"], np.float32)
    data = dict((run.stages["distill"].config.get("data") or {}), name=meta.get("dataset"))
    names, note = None, ""
    try:
        labels = train_labels(data, np.asarray(meta["init_indices"], np.int64))
        classes = class_names(data)
        order = np.argsort(labels, kind="stable")       # shown class by class
        pixels, labels = pixels[order], labels[order]
        names = [classes[i] if classes and i < len(classes) else str(i) for i in labels]
    except (DdjaxError, KeyError, IndexError, OSError) as err:
        note = f"class names unavailable ({str(err).splitlines()[0][:160]})"
    title = f"MKDT set after {iteration} iterations" if iteration else "MKDT set at the start"
    return ImageSet(title, pixels, names, note)


def lgm_image_set(tag: str, directory: Path) -> ImageSet:
    images, labels, meta = read_image_set(LGM_SET, directory)
    classes = meta.get("class_names") or []
    names = [classes[i] if i < len(classes) else str(i) for i in labels]
    return ImageSet(f"LGM set for backbone {tag} after {meta.get('updates')} updates", images,
                    names)
