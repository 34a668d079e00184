"""What students train on: the normalised (optionally ZCA-whitened) train split, read by rows
(:class:`StudentRows`: loaded whole, or with ``data.stream`` from the source), the teacher's
representations and the student network, shared by the experts, select, distill and eval stages
so that every stage sees exactly the same inputs. See docs/mkdt.md#experts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ddjax.artifacts.representations import REPRESENTATIONS, read_representations
from ddjax.artifacts.zca import ZCA, read_zca, write_zca
from ddjax.data.pipeline import dataset_spec, load_normalized, open_rows
from ddjax.data.stream import LoadedSplit, SplitReader
from ddjax.data.transforms import fit_zca, normalize, zca_digest, zca_whiten
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


def _zca(config, workdir: str | Path, spec, fit_missing: bool, images: Callable[[], np.ndarray]):
    """The ZCA transform of ``experts.zca``: read, or fitted on ``images()`` by the experts stage
    (``fit_missing``) and written; None when ZCA is off."""
    if not config.experts.zca:
        return None
    directory = ZCA.locate(workdir)
    identity = {"dataset": spec.name, "train_subset": int(config.data.get("train_subset", 0))}
    if fit_missing:
        identity["eps"] = float(config.experts.zca_eps)
    if ZCA.is_complete(directory):
        zca, meta = read_zca(directory)
        ZCA.check(meta, identity, directory)
        return zca
    if not fit_missing:
        raise DdjaxError(f"experts.zca is on but there is no ZCA transform at {directory}; run "
                         "`ddjax experts` with the same --config and --workdir first")
    zca = fit_zca(images(), eps=config.experts.zca_eps)
    write_zca(directory, zca, identity)
    return zca


def _whiten(images: np.ndarray, zca) -> np.ndarray:
    return np.concatenate([np.asarray(zca_whiten(images[i:i + 5000], zca))
                           for i in range(0, len(images), 5000)]).astype(np.float32)


class StudentRows:
    """The train split as students see it, read by rows: images normalised with the dataset's
    constants and whitened when ZCA is on (classic MTT; MKDT uses none), each with its target
    when given. Over the split loaded whole, or read from the source (``data.stream``).
    ``read(rows)`` takes any shape of row indices, e.g. ``[E, B]`` (each expert's minibatch),
    and returns ``((images float32, targets), labels)`` of that shape."""

    def __init__(self, reader: LoadedSplit | SplitReader, spec, zca=None, targets=None):
        self.reader, self.spec, self.zca, self.targets = reader, spec, zca, targets

    def __len__(self) -> int:
        return len(self.reader)

    def prepare(self, images_u8: np.ndarray) -> np.ndarray:
        """Stored uint8 images as the students' inputs: normalised, whitened when ZCA is on."""
        x = np.asarray(normalize(images_u8, self.spec.mean, self.spec.std), np.float32)
        return x if self.zca is None else _whiten(x, self.zca)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.reader.read(np.zeros(1, np.int64))[0].shape[1:3])

    def labels(self) -> np.ndarray:
        """Every row's label (int32); a pass over the split when it is streamed."""
        return self.reader.read_labels(np.arange(len(self)))

    def every_image(self) -> np.ndarray:
        """Every row's image, prepared: the split in memory (``[N, H, W, C]`` float32)."""
        return self.read(np.arange(len(self)))[0][0]

    def with_targets(self, targets: np.ndarray | None) -> "StudentRows":
        """The same rows, each read with its row of ``targets`` (``[N, ...]``, held in memory)."""
        return StudentRows(self.reader, self.spec, self.zca, targets)

    def read(self, rows) -> tuple[tuple[np.ndarray, np.ndarray | None], np.ndarray]:
        rows = np.asarray(rows, np.int64)
        images, labels = self.reader.read(rows.reshape(-1))
        images = self.prepare(images).reshape(rows.shape + images.shape[1:])
        targets = None if self.targets is None else \
            self.targets[rows.reshape(-1)].reshape(rows.shape + self.targets.shape[1:])
        return (images, targets), labels.reshape(rows.shape)


def student_rows(config, workdir: str | Path, *, fit_missing_zca: bool = False) -> "StudentRows":
    """The train split as :class:`StudentRows`: read from the source with ``data.stream``, else
    from the split loaded whole. A missing ZCA transform is fitted on the split loaded whole (ZCA
    is for classic MTT at CIFAR scale; its ``[D, D]`` matrices do not exist at ImageNet scale)."""
    spec = dataset_spec(config.data)
    zca = _zca(config, workdir, spec, fit_missing_zca,
               lambda: load_normalized(config.data, SPLIT)[0])
    return StudentRows(open_rows(config.data, SPLIT), spec, zca)


def student_model(config, num_outputs: int, image_size):
    """The student network of a config's ``model`` section."""
    extra = {"width": config.model.width} if "width" in config.model else {}
    return build_model(config.model.name, num_outputs=num_outputs, image_size=image_size,
                       conv_impl=config.model.conv_impl, init=config.model.init, **extra)
