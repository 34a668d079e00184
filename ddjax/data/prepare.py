"""Convert an image-folder archive, once, into a TFDS dataset that ``tfds`` data sources read.

A TFDS ``GeneratorBasedBuilder`` writes ``array_record`` files under
``<data_dir>/image_folder_archive/<name>/<version>/``, read back with random access and without
TensorFlow. Record i is layout file i (no shuffling). Same-size images are stored decoded (raw
uint8), others as their encoded bytes; every image is decoded once here, so a broken file fails
early. TFDS writes into an ``incomplete.*`` folder renamed at the end, so a killed run leaves
nothing that looks prepared; a prepared dataset is never rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ddjax.data.archive import Layout, common_image_size, iter_file_bytes, open_image, read_layout
from ddjax.data.registry import SPLITS, check_name
from ddjax.errors import DdjaxError
from ddjax.runlog import progress

DATA_DIR_ENV = "DDJAX_DATA_DIR"
VERSION = "1.0.0"


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS's output that means nothing to a ddjax user, off for the block: absl warnings about
    its builder configs and variant folders ("Using custom data configuration", "Variant folder
    ... has no dataset_info.json") and its progress bars (ddjax shows its own). Errors still
    show."""
    from tensorflow_datasets.core.utils import tqdm_utils

    logger = logging.getLogger("absl")
    level, bars = logger.level, getattr(tqdm_utils, "_active", True)
    logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        logger.setLevel(level)
        tfds.display_progress_bar(bars)


def archive_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where prepared archives live: `data_dir`, else `$DDJAX_DATA_DIR`, else
    `~/.cache/ddjax/tfds`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path.home() / ".cache" / "ddjax" / "tfds"


def prepared_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder a prepared archive for dataset `name` lives in (whether or not it exists)."""
    return archive_data_dir(data_dir) / ImageFolderArchive.name / name / VERSION


def is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether dataset `name` was prepared from an archive in `data_dir`."""
    return (prepared_dir(name, data_dir) / "dataset_info.json").is_file()


def _identity(source: Path) -> str:
    """What must match for an archive to count as the one a dataset was prepared from: its
    name, plus its size for a file (so a moved or copied archive still matches)."""
    if source.is_dir():
        return source.name
    return f"{source.name}:{source.stat().st_size}"


def prepare_archive(
    name: str,
    source: str | os.PathLike,
    *,
    class_names: tuple[str, ...] | None = None,
    num_classes: int | None = None,
    data_dir: str | os.PathLike | None = None,
    check_source: bool = False,
) -> Path:
    """Prepare dataset `name` from the archive `source` unless already done; return its folder.

    Args:
      name: dataset name (the TFDS config name).
      source: folder or tar archive (see `ddjax.data.archive`).
      class_names: label order the folders must match; None for sorted folder names.
      num_classes: the number of class folders required, if known.
      data_dir: see `archive_data_dir`.
      check_source: when the dataset is already prepared, require that it came from an archive
        like `source` (same name, and same size for a file); used for explicit `--archive`.
    """
    check_name(name)
    source = Path(source)
    target = prepared_dir(name, data_dir)
    if is_prepared(name, data_dir):
        if check_source:
            with quiet_tfds():
                recorded = tfds.builder_from_directory(os.fspath(target)).info.metadata
            if recorded["identity"] != _identity(source):
                raise DdjaxError(
                    f"{name} in {target} was prepared from {recorded['archive']}, not {source}; "
                    "delete that folder or pass another --data-dir"
                )
        return target
    print(f"ddjax: preparing {name} from {source} into {target} (once; later runs read it "
          "from there)", file=sys.stderr, flush=True)
    layout = read_layout(source, class_names, num_classes)
    with quiet_tfds(), tempfile.TemporaryDirectory() as downloads:  # nothing is downloaded
        builder = ImageFolderArchive(
            name=name,
            layout=layout,
            image_size=common_image_size(layout),
            data_dir=archive_data_dir(data_dir),
        )
        try:
            builder.download_and_prepare(download_dir=downloads)
        except OSError:
            # Another process preparing the same dataset renamed its copy into place first.
            if not is_prepared(name, data_dir):
                raise
    return target


class ImageFolderArchive(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for one image-folder archive; its config name is the dataset name."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(
        self,
        *,
        name: str,
        layout: Layout,
        image_size: tuple[int, int] | None,
        data_dir: Path,
    ):
        self._layout = layout
        self._image_size = image_size
        super().__init__(
            config=tfds.core.BuilderConfig(name=name),
            data_dir=os.fspath(data_dir),
            file_format="array_record",
        )

    def _info(self) -> tfds.core.DatasetInfo:
        if self._image_size is None:
            image = tfds.features.Image(shape=(None, None, 3))
        else:
            image = tfds.features.Tensor(
                shape=(*self._image_size, 3), dtype=np.uint8, encoding="bytes"
            )
        source = self._layout.source
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Image-folder archive {source}, converted by ddjax.",
            features=tfds.features.FeaturesDict(
                {"image": image, "label": tfds.features.ClassLabel(names=self._layout.class_names)}
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                archive=str(source.resolve()), identity=_identity(source)
            ),
        )

    def _log_download_bytes(self) -> None:
        pass  # TFDS's "Downloading and preparing dataset Unknown size...": prepare_archive says it

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        del dl_manager  # the data is local
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        files = self._layout.files[split]
        keys = {path: key for key, (path, _) in enumerate(files)}
        labels = dict(files)
        source = self._layout.source
        with progress(total=len(files), desc=f"prepare {self.builder_config.name} {split}") as bar:
            for path, data in iter_file_bytes(source, [path for path, _ in files]):
                image = open_image(data, f"{source}:{path}")
                yield keys[path], {"image": self._encode(image, data), "label": labels[path]}
                bar.update(1)

    def _encode(self, image, data: bytes):
        """Pixels for a Tensor feature; for an Image feature the original file when it is an
        RGB JPEG/PNG (no re-encoding), else the RGB conversion (TFDS stores it as PNG)."""
        if self._image_size is not None:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
            return data
        return image.convert("RGB")
