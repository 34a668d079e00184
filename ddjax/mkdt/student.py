"""What students train on: the normalised (optionally ZCA-whitened) train split, the teacher's
representations and the student network, shared by the experts, select, distill and eval stages
so that every stage sees exactly the same inputs. See docs/mkdt.md#experts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.artifacts.zca import ZCA, read_zca, write_zca
from ddjax.data.pipeline import dataset_spec, load_normalized
from ddjax.data.transforms import fit_zca, zca_digest, zca_whiten
from ddjax.errors import DdjaxError
from ddjax.models import build_model

SPLIT = "train"


def representations_dir(config, workdir: str | Path) -> Path:
    """The configured representations artifact (``experts.representations``), else the
    ``represent`` stage's in ``workdir``."""
    configured = config.experts.representations
    return Path(configured).absolute() if configured else REPRESENTATIONS.locate(workdir)


def data_identity(config) -> dict:
    """The data an index or a row refers to: the dataset's name and the train subset."""
    return {"dataset": dataset_spec(config.data).name,
            "train_subset": int(config.data.get("train_subset", 0))}


def store_identity(config, workdir: str | Path, spec, zca, loss: str) -> dict:
    """What identifies a trajectory store for this config: the data (dataset, train subset,
    normalisation, ZCA digest), the student (name, width), the expert loss and, for KD experts,
    the teacher whose representations they regressed. Written by the experts stage, checked by
    select and distill."""
    teacher = None
    if loss == "mse":
        teacher = REPRESENTATIONS.read_meta(representations_dir(config, workdir))["teacher_sha256"]
    return {**data_identity(config), "model": config.model.name, "model_kwargs": {"width": config.model.get("width")},
            "loss": loss, "teacher_sha256": teacher,
            "standardize_targets": True if loss == "mse" and config.experts.get("standardize_targets")
            else None,
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std),
                              "zca": zca_digest(zca) if zca is not None else None}}


def load_representations(config, workdir: str | Path, spec, num_images: int) -> np.ndarray:
    """The teacher's float32 ``[N, D]`` representations of the train split, checked to be of
    this dataset and subset and to have one row per image."""
    directory = representations_dir(config, workdir)
    reps, meta = read_representations(directory)
    REPRESENTATIONS.check(meta, {"dataset": spec.name, "split": SPLIT,
                                 "train_subset": int(config.data.get("train_subset", 0))}, directory)
    if reps.ndim != 2 or reps.shape[0] != num_images:
        raise DdjaxError(f"representations {directory} have shape {reps.shape} but the train split "
                         f"has {num_images} images; compute them for this dataset with "
                         "`ddjax represent`")
    if config.experts.get("standardize_targets"):
        reps = reps / dimension_rms(reps)
    return reps


def dimension_rms(reps: np.ndarray) -> np.ndarray:
    """Each dimension's root mean square over the rows, ``[D]`` (a dead dimension counts as 1)."""
    rms = np.sqrt(np.mean(np.square(reps, dtype=np.float64), axis=0))
    return np.where(rms > 0, rms, 1.0).astype(reps.dtype)


def student_inputs(config, workdir: str | Path, *, fit_missing_zca: bool = False):
    """``(images, labels, spec, zca)``: the train split normalised with the dataset's constants,
    whitened when ``experts.zca`` is on (classic MTT; MKDT uses none). The ZCA transform is
    fitted once, by the experts stage (``fit_missing_zca``), and read by every later stage."""
    images, labels, spec = load_normalized(config.data, SPLIT)
    if not config.experts.zca:
        return images, labels, spec, None
    directory = ZCA.locate(workdir)
    identity = {"dataset": spec.name, "train_subset": int(config.data.get("train_subset", 0))}
    if fit_missing_zca:
        identity["eps"] = float(config.experts.zca_eps)
    if ZCA.is_complete(directory):
        zca, meta = read_zca(directory)
        ZCA.check(meta, identity, directory)
    elif fit_missing_zca:
        zca = fit_zca(images, eps=config.experts.zca_eps)
        write_zca(directory, zca, identity)
    else:
        raise DdjaxError(f"experts.zca is on but there is no ZCA transform at {directory}; run "
                         "`ddjax experts` with the same --config and --workdir first")
    whitened = np.concatenate([np.asarray(zca_whiten(images[i:i + 5000], zca))
                               for i in range(0, len(images), 5000)])
    return whitened.astype(np.float32), labels, spec, zca


def student_model(config, num_outputs: int, image_size):
    """The student network of a config's ``model`` section."""
    extra = {"width": config.model.width} if "width" in config.model else {}
    return build_model(config.model.name, num_outputs=num_outputs, image_size=image_size,
                       conv_impl=config.model.conv_impl, init=config.model.init, **extra)
