"""``ddjax represent``: the teacher's representations of the whole train split (MKDT's targets).

As MKDT's ``get_target_rep.py`` (mkdt.md §1-§2): the teacher in eval mode (BatchNorm running
statistics), no augmentation, the dataset's normalisation constants, every train image once in
the stored order, the raw output kept (no normalisation or centring). Row ``i`` belongs to train
image ``i`` of ``load_split(config.data, 'train')``: the whole split, or the fixed subset that
``data.train_subset`` selects for small runs (the same rows every later stage loads).

Writes ``<workdir>/represent/representations`` (``save_pytree`` of ``{"representations": float32
[N, D]}``, what ``ddjax experts`` reads) and ``provenance.json`` (teacher digest, dataset, split,
normalisation, N, D). A rerun with the same teacher and data is a no-op; a different teacher or
dataset is refused rather than overwriting the artifact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ddjax.checkpoint import save_pytree
from ddjax.data.pipeline import dataset_spec, load_split
from ddjax.errors import DdjaxError
from ddjax.runlog import print_summary
from ddjax.artifacts.teacher import encode_images, load_teacher, read_meta

READS = ("data", "represent")
REPRESENTATIONS_KEY = "representations"  # the key and file name ddjax.mkdt.experts_stage reads
PROVENANCE = "provenance.json"
SPLIT = "train"
# Provenance fields that identify the artifact: a rerun that differs in any of them is refused.
IDENTITY = ("teacher_sha256", "dataset", "split", "train_subset", "normalisation")


def teacher_directory(stage) -> Path:
    configured = stage.config.represent.teacher
    return Path(configured).absolute() if configured else stage.sibling("teacher")


def _summary(stage, provenance: dict) -> dict:
    return print_summary("represent", stage.workdir,
                         {"representations": stage.directory / REPRESENTATIONS_KEY,
                          "provenance": stage.directory / PROVENANCE},
                         teacher_sha256=provenance["teacher_sha256"], dataset=provenance["dataset"],
                         n=provenance["n"], d=provenance["d"])


def run(stage) -> dict:
    cfg = stage.config
    teacher_dir = teacher_directory(stage)
    teacher_meta = read_meta(teacher_dir)  # clear error when there is no teacher artifact
    spec = dataset_spec(cfg.data)
    identity = {"teacher_sha256": teacher_meta["sha256"], "dataset": spec.name, "split": SPLIT,
                "train_subset": int(cfg.data.get("train_subset", 0)),
                "normalisation": {"mean": list(spec.mean), "std": list(spec.std)}}
    out, provenance_path = stage.directory / REPRESENTATIONS_KEY, stage.directory / PROVENANCE
    if out.exists():
        if not provenance_path.exists():
            raise DdjaxError(f"{out} exists without {PROVENANCE}; remove it (or use another "
                             "--workdir) and rerun")
        recorded = json.loads(provenance_path.read_text())
        changed = [k for k in IDENTITY if recorded.get(k) != identity[k]]
        if changed:
            raise DdjaxError(f"{out} was computed with a different {', '.join(changed)} "
                             f"(teacher {str(recorded.get('teacher_sha256'))[:12]}..., now "
                             f"{identity['teacher_sha256'][:12]}...); it is not overwritten: use "
                             "a new --workdir or remove it")
        return _summary(stage, recorded)

    model, variables, _ = load_teacher(teacher_dir)
    images, _ = load_split(cfg.data, SPLIT)
    if list(images.shape[1:3]) != list(teacher_meta["image_size"]):
        raise DdjaxError(f"the teacher takes {teacher_meta['image_size']} images but {spec.name} "
                         f"has {list(images.shape[1:3])}")
    reps = encode_images(model, variables, images, spec.mean, spec.std,
                         cfg.represent.batch_size, desc="represent")
    if not np.isfinite(reps).all():
        raise DdjaxError("the teacher produced non-finite representations; check the teacher "
                         "artifact")
    provenance = dict(identity, teacher=str(teacher_dir), teacher_model=teacher_meta["model"],
                      teacher_method=teacher_meta.get("method"), n=int(reps.shape[0]),
                      d=int(reps.shape[1]), dtype="float32",
                      representations_sha256=hashlib.sha256(reps.tobytes()).hexdigest())
    # provenance.json goes in first and the array last, so `representations` existing means done.
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_provenance = provenance_path.with_suffix(".json.tmp")
    if tmp_out.exists():
        shutil.rmtree(tmp_out)
    save_pytree(tmp_out, {REPRESENTATIONS_KEY: reps})
    tmp_provenance.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    tmp_provenance.replace(provenance_path)
    tmp_out.rename(out)
    stage.metrics.write(0, n=provenance["n"], d=provenance["d"], mean=float(reps.mean()),
                        std=float(reps.std()))
    return _summary(stage, provenance)
