"""Datasets for ddjax: specs, local archives and TFDS sources, transforms and subsets.

Typical use:

    images, labels = load_arrays("cifar10", "train")          # uint8 NHWC, int32
    spec = get_spec("cifar10")
    x = normalize(images, spec.mean, spec.std)                 # float32
"""

from ddjax.data.archive import ARCHIVE_DIR_ENV, find_archive
from ddjax.data.prepare import DATA_DIR_ENV, archive_data_dir, prepare_archive
from ddjax.data.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    DatasetSpec,
    get_spec,
    known_names,
)
from ddjax.data.sources import dataset_info, iterate_batches, load_arrays, open_split, spec_for
from ddjax.data.subsets import class_balanced_subset, label_fraction_indices, random_subset
from ddjax.data.transforms import (
    Zca,
    denormalize,
    fit_zca,
    normalize,
    resize_images,
    zca_digest,
    zca_unwhiten,
    zca_whiten,
)

__all__ = [
    "ARCHIVE_DIR_ENV",
    "DATA_DIR_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "DatasetSpec",
    "Zca",
    "archive_data_dir",
    "class_balanced_subset",
    "dataset_info",
    "denormalize",
    "find_archive",
    "fit_zca",
    "get_spec",
    "iterate_batches",
    "known_names",
    "label_fraction_indices",
    "load_arrays",
    "normalize",
    "open_split",
    "prepare_archive",
    "random_subset",
    "resize_images",
    "spec_for",
    "zca_digest",
    "zca_unwhiten",
    "zca_whiten",
]
