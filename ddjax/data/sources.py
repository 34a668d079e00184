"""Open a dataset split by name: from a local image-folder archive, else from TFDS.

``name`` (with optional ``archive`` and ``data_dir``) resolves to, in order: an explicit archive
(prepared into ``data_dir`` on first use); a dataset already prepared from an archive; an archive
found in ``$DDJAX_ARCHIVE_DIR`` or the shared data folder; TFDS's own builder, which may download.
Every source is a random-access TFDS data source of ``{'image': uint8 HWC, 'label'}`` records;
``load_arrays`` reads a whole split into memory, ``iterate_batches`` streams a subset.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ddjax.data import prepare
from ddjax.data.archive import describe_search, find_archive
from ddjax.data.registry import (
    REGISTRY,
    DatasetSpec,
    adhoc_spec,
    check_split,
    get_spec,
    is_valid_name,
)
from ddjax.data.transforms import resize_images
from ddjax.errors import DdjaxError

PathLike = str | os.PathLike
_READ_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """Where a dataset's records come from."""

    spec: DatasetSpec
    prepared: str | None  # folder of a prepared archive, or None for TFDS
    tfds_data_dir: str | None
    source: str  # "archive:<path>" or "tfds"


def _resolve(name: str, archive: PathLike | None, data_dir: PathLike | None) -> _Resolved:
    spec = REGISTRY.get(name)
    if spec is None and not is_valid_name(name):
        get_spec(name)  # cannot name an archive either: the unknown-name error
    if archive is not None:
        found = find_archive(name, archive)
    elif prepare.is_prepared(name, data_dir):
        found = None
    else:
        found = find_archive(name)
    if found is not None:
        folder = prepare.prepare_archive(
            name,
            found,
            class_names=spec.class_names if spec else None,
            num_classes=spec.num_classes if spec else None,
            data_dir=data_dir,
            check_source=archive is not None,
        )
    elif prepare.is_prepared(name, data_dir):
        folder = prepare.prepared_dir(name, data_dir)
    elif spec is None:
        get_spec(name)  # raises, listing the known names
    elif spec.tfds_name is None:
        raise DdjaxError(
            f"no archive for {name} (TFDS does not have it); looked for {describe_search(name)}; "
            "pass --archive PATH or set DDJAX_ARCHIVE_DIR"
        )
    else:
        tfds_dir = data_dir if data_dir is not None else os.environ.get(prepare.DATA_DIR_ENV)
        return _Resolved(spec, None, None if tfds_dir is None else os.fspath(tfds_dir), "tfds")
    with prepare.quiet_tfds():
        info = tfds.builder_from_directory(os.fspath(folder)).info
    if spec is None:
        shape = info.features["image"].shape
        spec = adhoc_spec(name, tuple(info.features["label"].names), _size_of(shape))
    return _Resolved(spec, os.fspath(folder), None, f"archive:{info.metadata['archive']}")


def _size_of(shape: Sequence[int | None]) -> tuple[int, int] | None:
    return None if None in shape[:2] else (int(shape[0]), int(shape[1]))


def _open(resolved: _Resolved, split: str):
    if resolved.prepared is not None:
        with prepare.quiet_tfds():
            return tfds.builder_from_directory(resolved.prepared).as_data_source(split=split)
    spec = resolved.spec
    try:
        return tfds.data_source(
            spec.tfds_name, split=spec.tfds_split(split), data_dir=resolved.tfds_data_dir
        )
    except Exception as e:  # any TFDS failure (no network, manual download, TF missing)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        raise DdjaxError(
            f"TFDS could not provide {spec.tfds_name} (data_dir "
            f"{resolved.tfds_data_dir or 'TFDS default'}; {reason}) and there is no archive "
            f"for {spec.name} ({describe_search(spec.name)}); pass --archive PATH or set "
            "DDJAX_ARCHIVE_DIR"
        ) from e


def local_unavailable_reason(
    name: str, *, archive: PathLike | None = None, data_dir: PathLike | None = None
) -> str | None:
    """None when `name` is readable without a download (a local archive, a prepared archive, or
    TFDS data already prepared in its data dir), else a one-line reason. Callers that must not
    wait on a download (evaluation over many downstream sets) ask this first."""
    try:
        resolved = _resolve(name, archive, data_dir)
    except DdjaxError as e:
        return str(e)
    if resolved.prepared is not None:
        return None
    spec = resolved.spec
    try:
        with prepare.quiet_tfds():  # absl: "Variant folder ... has no dataset_info.json"
            prepared = tfds.builder(spec.tfds_name, data_dir=resolved.tfds_data_dir).is_prepared()
        if prepared:
            return None
    except Exception as e:  # TFDS cannot even describe it (unknown builder, TF missing)
        return f"TFDS cannot open {spec.tfds_name}: {type(e).__name__}: {e}"[:300]
    return (f"no local copy of {name}: no archive ({describe_search(name)}) and TFDS has not "
            f"prepared {spec.tfds_name} in {resolved.tfds_data_dir or 'its default data dir'}")


def open_split(
    name: str, split: str, *, archive: PathLike | None = None, data_dir: PathLike | None = None
):
    """Random-access TFDS data source for `split` ('train' or 'test') of dataset `name`.

    Supports `len`, `source[i]` and `source.__getitems__(indices)`; records are dicts with
    'image' (uint8 HWC numpy) and 'label'. See the module docstring for where data comes from.
    """
    check_split(split)
    return _open(_resolve(name, archive, data_dir), split)


def spec_for(
    name: str, *, archive: PathLike | None = None, data_dir: PathLike | None = None
) -> DatasetSpec:
    """The spec `open_split` uses for `name` (an ad-hoc one for an unregistered archive)."""
    return _resolve(name, archive, data_dir).spec


def iterate_batches(
    source,
    batch_size: int,
    indices: Sequence[int] | np.ndarray,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images NHWC, labels int32) for `indices` of `source` (a data source from
    `open_split`, or any sequence of {'image', 'label'} records), in order, `batch_size` at a time.

    The last batch may be smaller. `transform`, if given, maps each uint8 HWC image to the
    array to stack (e.g. a resize or crop); images must have one shape after it.
    """
    if batch_size < 1:
        raise DdjaxError(f"batch size must be at least 1, got {batch_size}")
    indices = np.asarray(indices, dtype=np.int64)
    # TFDS data sources read a list of records in one call; plain sequences one by one.
    get_many = getattr(source, "__getitems__", lambda chunk: [source[i] for i in chunk])
    for start in range(0, len(indices), batch_size):
        records = get_many(indices[start : start + batch_size].tolist())
        images = [r["image"] for r in records]
        if transform is not None:
            images = [transform(image) for image in images]
        if len({image.shape for image in images}) > 1:
            raise DdjaxError(
                "images in a batch have different sizes; pass a transform that resizes them "
                "(or resize_to for load_arrays)"
            )
        yield np.stack(images), np.array([r["label"] for r in records], dtype=np.int32)


def resizer(size: tuple[int, int] | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The ``iterate_batches`` transform that resizes an image to ``size`` (PIL LANCZOS); None
    keeps images as stored."""
    return None if size is None else (lambda image: resize_images([image], size)[0])


def load_arrays(
    name: str,
    split: str,
    *,
    archive: PathLike | None = None,
    data_dir: PathLike | None = None,
    resize_to: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory: (images uint8 NHWC, labels int32 N), in stored order.

    Images are resized with PIL LANCZOS to `resize_to`, else to the spec's `resize_to` (MKDT's
    32x32 fine-grained sets), else kept as stored. Meant for CIFAR-scale sets; stream larger
    ones with `open_split` and `iterate_batches`.
    """
    check_split(split)
    resolved = _resolve(name, archive, data_dir)
    source = _open(resolved, split)
    transform = resizer(resize_to or resolved.spec.resize_to)
    images, labels = [], []
    for x, y in iterate_batches(source, _READ_BATCH, np.arange(len(source)), transform=transform):
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def dataset_info(
    name: str, *, archive: PathLike | None = None, data_dir: PathLike | None = None
) -> dict:
    """Summary for `ddjax data info`; prepares (or downloads) the dataset if needed.

    Keys: name, splits {split: count}, num_classes, image_shape [H, W, 3] (None for sizes that
    vary), source ("archive:<path>" or "tfds").
    """
    resolved = _resolve(name, archive, data_dir)
    sources = {split: _open(resolved, split) for split in ("train", "test")}
    features = sources["train"].dataset_info.features
    return {
        "name": name,
        "splits": {split: len(source) for split, source in sources.items()},
        "num_classes": int(features["label"].num_classes),
        "image_shape": list(features["image"].shape),
        "source": resolved.source,
    }
