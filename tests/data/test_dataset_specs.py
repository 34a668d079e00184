"""Registry: constants from the references, class orders, unknown names."""

import pytest
import tensorflow_datasets as tfds

from ddjax.data import IMAGENET_MEAN, IMAGENET_STD, REGISTRY, get_spec, known_names
from ddjax.data.registry import adhoc_spec
from ddjax.errors import DdjaxError

# MKDT's utils.get_dataset.
MKDT_CONSTANTS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "aircraft": ((0.4804, 0.5116, 0.5349), (0.2021, 0.1953, 0.2297)),
    "cub": ((0.4857, 0.4995, 0.4324), (0.2145, 0.2098, 0.2496)),
    "dogs": ((0.4765, 0.4516, 0.3911), (0.2490, 0.2435, 0.2479)),
    "flowers": ((0.4329, 0.3820, 0.2965), (0.2828, 0.2333, 0.2615)),
}


@pytest.mark.parametrize("name", sorted(MKDT_CONSTANTS))
def test_mkdt_normalisation_constants(name):
    spec = get_spec(name)
    assert (spec.mean, spec.std) == MKDT_CONSTANTS[name]


def test_imagenet_statistics_for_lgm_sets():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    for name in ("imagenet2012", "imagenet100", "imagenet10_imagenette", "food101"):
        assert (get_spec(name).mean, get_spec(name).std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_cifar10_class_order_and_size():
    spec = get_spec("cifar10")
    assert spec.class_names == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )
    assert spec.image_size == (32, 32) and spec.tfds_name == "cifar10"


def test_cifar100_names_are_the_100_standard_fine_labels_in_alphabetical_order():
    names = get_spec("cifar100").class_names
    assert len(set(names)) == 100
    assert list(names) == sorted(names)
    assert {"apple", "aquarium_fish", "maple_tree", "sweet_pepper", "worm"} <= set(names)


def test_mkdt_downstream_sets_resize_to_32_with_tiny_at_64():
    for name in ("aircraft", "cub", "dogs", "flowers"):
        assert get_spec(name).resize_to == (32, 32)
    assert get_spec("tiny_imagenet").image_size == (64, 64)
    assert get_spec("tiny_imagenet").resize_to is None
    assert get_spec("tiny_imagenet").tfds_name is None


def test_imagenet_subsets_use_lgm_label_order():
    # LGM's order: ImageNet-100 label 0 is class 452 = n02869837, label 1 is 64 = n01749939.
    imagenet100 = get_spec("imagenet100").class_names
    assert imagenet100[:2] == ("n02869837", "n01749939")
    assert len(set(imagenet100)) == 100
    assert get_spec("imagenet10_imagenette").class_names[0] == "n01440764"  # class 0, tench
    assert get_spec("imagenet2012").tfds_split("test") == "validation"


def test_every_spec_is_consistent():
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == 3
        assert set(spec.splits) == {"train", "test"}
        if spec.class_names is not None:
            assert len(spec.class_names) == spec.num_classes


def test_tfds_names_are_real_tfds_builders():
    for spec in REGISTRY.values():
        if spec.tfds_name is not None:
            tfds.builder_cls(spec.tfds_name)  # raises if TFDS does not know it


def test_unknown_name_lists_known_names():
    with pytest.raises(DdjaxError) as err:
        get_spec("cifar11")
    message = str(err.value)
    assert "cifar11" in message and "\n" not in message
    assert all(name in message for name in known_names())


def test_unknown_split_is_an_error():
    with pytest.raises(DdjaxError, match="split 'val'"):
        get_spec("cifar10").tfds_split("val")


def test_adhoc_spec_uses_imagenet_statistics_and_checks_the_name():
    spec = adhoc_spec("my_set", ("a", "b"), (8, 8))
    assert (spec.num_classes, spec.mean, spec.std) == (2, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(DdjaxError, match="bad dataset name"):
        adhoc_spec("My-Set", ("a",), None)
