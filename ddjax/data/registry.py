"""Dataset specifications: what each known dataset is and how the methods use it.

A `DatasetSpec` is the one place that says where a dataset comes from (a TFDS name and its split
names, or a local image-folder archive only), how many classes it has and in which order, the
resolution the methods work at, and the per-dataset normalisation constants of the reference code
(MKDT `utils.get_dataset`; ImageNet statistics for LGM and for datasets MKDT does not list).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ddjax.errors import DdjaxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPLITS = ("train", "test")
_SAME_SPLITS = MappingProxyType({"train": "train", "test": "test"})
_VALIDATION_AS_TEST = MappingProxyType({"train": "train", "test": "validation"})
# Dataset names become TFDS config and folder names, so keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What ddjax knows about one dataset.

    Attributes:
      name: the ddjax name (lower case, `[a-z][a-z0-9_]*`).
      num_classes: number of classes.
      image_size: (H, W) the methods work at; None when images keep their native sizes.
      mean, std: per-channel normalisation constants for pixels scaled to [0, 1].
      tfds_name: the TFDS builder that provides it, or None when only a local archive can.
      class_names: label order; None means the sorted class-folder names (torchvision
        `ImageFolder` order, which is what the reference code sees) or TFDS's own names.
      splits: ddjax split ('train', 'test') -> TFDS split name.
      resize_to: (H, W) that `load_arrays` resizes to with LANCZOS (MKDT's fine-grained
        downstream sets); None keeps the stored size.
    """

    name: str
    num_classes: int
    image_size: tuple[int, int] | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tfds_name: str | None = None
    class_names: tuple[str, ...] | None = None
    splits: Mapping[str, str] = dataclasses.field(default_factory=lambda: _SAME_SPLITS, hash=False)
    resize_to: tuple[int, int] | None = None

    def tfds_split(self, split: str) -> str:
        """The TFDS split name for a ddjax split ('train' or 'test')."""
        check_split(split)
        return self.splits[split]


def check_split(split: str) -> None:
    """Raise a DdjaxError unless `split` is one of the ddjax split names."""
    if split not in SPLITS:
        raise DdjaxError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")


def is_valid_name(name: str) -> bool:
    """Whether `name` can name a dataset (it becomes a TFDS config and folder name)."""
    return _NAME_RE.match(name) is not None


def check_name(name: str) -> None:
    """Raise a DdjaxError unless `name` can name a dataset."""
    if not is_valid_name(name):
        raise DdjaxError(
            f"bad dataset name '{name}'; use lower-case letters, digits and '_', "
            "starting with a letter"
        )


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)

# LGM's ImageNet subsets: labels are positions in these lists of ImageNet-1k class indices, as in
# the LGM reference. A local archive for them holds one folder per WordNet id (e.g. n01440764).
IMAGENET100_INDICES = (
    452, 64, 374, 236, 993, 176, 882, 904, 503, 74, 57, 959, 953, 508, 872, 228, 122, 421, 599,
    858, 157, 449, 994, 608, 151, 209, 15, 876, 246, 766, 455, 857, 131, 119, 234, 90, 45, 936,
    479, 272, 665, 653, 659, 158, 960, 765, 908, 703, 407, 560, 317, 938, 724, 748, 331, 619, 120,
    267, 155, 708, 368, 772, 167, 494, 180, 431, 342, 854, 305, 54, 268, 667, 166, 277, 662, 798,
    313, 498, 299, 222, 682, 593, 775, 674, 592, 137, 758, 717, 606, 281, 796, 211, 620, 830, 544,
    275, 242, 570, 99, 169,
)
IMAGENET10_INDICES = {
    "birds": (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    "fruits": (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    "cats": (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    "imagenette": (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    "imagewoof": (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    "a": (255, 376, 984, 364, 500, 986, 333, 576, 148, 135),
    "b": (129, 916, 90, 275, 995, 874, 102, 259, 685, 139),
    "c": (565, 94, 554, 535, 92, 392, 291, 136, 324, 11),
    "d": (9, 258, 13, 262, 19, 339, 321, 24, 93, 322),
    "e": (816, 96, 100, 145, 739, 713, 783, 76, 688, 326),
}


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in label order, from the file TFDS ships.

    Found through the installed package's location so that importing the registry does not
    import TFDS itself.
    """
    package = importlib.util.find_spec("tensorflow_datasets")
    if package is None or not package.submodule_search_locations:
        raise DdjaxError("tensorflow-datasets is not installed; reinstall ddjax's dependencies")
    root = Path(list(package.submodule_search_locations)[0])
    return tuple((root / "datasets" / "imagenet2012" / "labels.txt").read_text().split())


def _imagenet_subset(name: str, indices: tuple[int, ...], wnids: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        num_classes=len(indices),
        image_size=(256, 256),
        class_names=tuple(wnids[i] for i in indices),
    )


def _build_registry() -> dict[str, DatasetSpec]:
    mkdt_small = dict(resize_to=(32, 32), image_size=(32, 32))
    specs = [
        DatasetSpec(
            "cifar10", 10, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
            tfds_name="cifar10", class_names=CIFAR10_CLASSES,
        ),
        DatasetSpec(
            "cifar100", 100, (32, 32), (0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023),
            tfds_name="cifar100", class_names=CIFAR100_CLASSES,
        ),
        # Tiny-ImageNet (MKDT uses the ImageNet statistics for it); local archive only, with
        # the official val images sorted into class folders and named test/.
        DatasetSpec("tiny_imagenet", 200, (64, 64)),
        # FGVC-Aircraft 2013b 'variant' classes, trainval as train/; local archive only.
        DatasetSpec(
            "aircraft", 100, mean=(0.4804, 0.5116, 0.5349), std=(0.2021, 0.1953, 0.2297),
            **mkdt_small,
        ),
        DatasetSpec(
            "cub", 200, mean=(0.4857, 0.4995, 0.4324), std=(0.2145, 0.2098, 0.2496),
            tfds_name="caltech_birds2011", **mkdt_small,
        ),
        DatasetSpec(
            "dogs", 120, mean=(0.4765, 0.4516, 0.3911), std=(0.2490, 0.2435, 0.2479),
            tfds_name="stanford_dogs", **mkdt_small,
        ),
        DatasetSpec(
            "flowers", 102, mean=(0.4329, 0.3820, 0.2965), std=(0.2828, 0.2333, 0.2615),
            tfds_name="oxford_flowers102", **mkdt_small,
        ),
        DatasetSpec(
            "imagenet2012", 1000, (256, 256), tfds_name="imagenet2012",
            splits=_VALIDATION_AS_TEST,
        ),
        DatasetSpec(
            "food101", 101, (256, 256), tfds_name="food101", splits=_VALIDATION_AS_TEST,
        ),
        DatasetSpec("artbench", 10, (256, 256)),
    ]
    wnids = imagenet_wnids()
    specs.append(_imagenet_subset("imagenet100", IMAGENET100_INDICES, wnids))
    specs += [
        _imagenet_subset(f"imagenet10_{key}", indices, wnids)
        for key, indices in IMAGENET10_INDICES.items()
    ]
    return {spec.name: spec for spec in specs}


REGISTRY: Mapping[str, DatasetSpec] = MappingProxyType(_build_registry())


def known_names() -> tuple[str, ...]:
    """Names of all registered datasets, sorted."""
    return tuple(sorted(REGISTRY))


def get_spec(name: str) -> DatasetSpec:
    """The registered spec for `name`; a DdjaxError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DdjaxError(
            f"unknown dataset '{name}'; known: {', '.join(known_names())} "
            "(or pass --archive with an image-folder archive)"
        ) from None


def adhoc_spec(
    name: str, class_names: tuple[str, ...], image_size: tuple[int, int] | None
) -> DatasetSpec:
    """Spec for a local archive whose name is not registered.

    Classes are the archive's class folders in sorted order, the image size is what the archive
    holds (None when sizes vary), normalisation uses the ImageNet statistics, and there is no
    TFDS fallback and no resize.
    """
    check_name(name)
    return DatasetSpec(
        name=name, num_classes=len(class_names), image_size=image_size, class_names=class_names
    )
