"""``ddjax represent``: the teacher's representations of the train split, MKDT's regression
targets. Row ``i`` belongs to train image ``i`` of ``open_rows(config.data, 'train')`` (the whole
split, or the fixed subset of ``data.train_subset``), computed in eval mode without augmentation
as the reference's ``get_target_rep.py`` does. A rerun with the same teacher and data does
nothing; another teacher or dataset is refused. See docs/mkdt.md#representations.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ddjax.artifacts.representations import REPRESENTATIONS, write_representations
from ddjax.artifacts.teacher import TEACHER, artifact_dir, load_teacher
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.errors import DdjaxError
from ddjax.runlog import print_summary
from ddjax.ssl.encode import encode_rows
from ddjax.workdir import Stage

READS = ("data", "represent")
SPLIT = "train"


def teacher_directory(stage: Stage) -> Path:
    """The teacher artifact: ``represent.teacher`` (an artifact or a teacher stage directory),
    else this workdir's."""
    configured = stage.config.represent.teacher
    return artifact_dir(configured) if configured else TEACHER.locate(stage.workdir)


def _summary(stage: Stage, directory: Path, meta: dict) -> dict:
    return print_summary("represent", stage.workdir, {"representations": directory},
                         teacher_sha256=meta["teacher_sha256"], dataset=meta["dataset"],
                         n=meta["n"], d=meta["d"])


def run(stage: Stage) -> dict:
    cfg = stage.config
    teacher_dir = teacher_directory(stage)
    teacher_meta = TEACHER.read_meta(teacher_dir)  # one line naming `ddjax teacher` when missing
    spec = dataset_spec(cfg.data)
    identity = {"teacher_sha256": teacher_meta["sha256"], "dataset": spec.name, "split": SPLIT,
                "train_subset": int(cfg.data.get("train_subset", 0)),
                "normalisation": {"mean": list(spec.mean), "std": list(spec.std)}}
    out = REPRESENTATIONS.locate(stage.workdir)
    if REPRESENTATIONS.is_complete(out):
        meta = REPRESENTATIONS.read_meta(out)
        REPRESENTATIONS.check(meta, identity, out)
        return _summary(stage, out, meta)

    stage.metrics.rewind(-1)  # a run stopped before the artifact was complete starts over
    model, variables, _ = load_teacher(teacher_dir)
    split = open_rows(cfg.data, SPLIT)  # with data.stream, read batch by batch, each process its rows
    size = list(split.read([0])[0].shape[1:3])
    if size != list(teacher_meta["image_size"]):
        raise DdjaxError(f"the teacher takes {teacher_meta['image_size']} images but {spec.name} "
                         f"has {size}")
    reps = encode_rows(model, variables, split, np.arange(len(split)), spec.mean, spec.std,
                       cfg.represent.batch_size, desc="represent")
    if not np.isfinite(reps).all():
        raise DdjaxError("the teacher produced non-finite representations; check the teacher "
                         "artifact")
    meta = dict(identity, teacher=str(teacher_dir), teacher_model=teacher_meta["model"],
                teacher_method=teacher_meta.get("method"), n=int(reps.shape[0]),
                d=int(reps.shape[1]), dtype="float32",
                representations_sha256=hashlib.sha256(reps.tobytes()).hexdigest())
    stage.metrics.write(0, n=meta["n"], d=meta["d"], mean=float(reps.mean()), std=float(reps.std()))
    meta = write_representations(out, reps, meta)
    return _summary(stage, out, meta)
