"""The real CIFAR-10 JPEG archive, prepared once per session (see tests/conftest.py)."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ddjax.data import dataset_info, get_spec, load_arrays, open_split

pytestmark = pytest.mark.slow


def _decode_from_tar(archive, member_names):
    """Decode the named JPEGs straight from the tar, independently of ddjax."""
    found = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name in member_names:
                data = tar.extractfile(member).read()
                found[member.name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return [found[name] for name in member_names]


def test_cifar10_train_and_test_arrays(cifar10_archive, cifar10_data_dir):
    train_x, train_y = load_arrays("cifar10", "train", data_dir=cifar10_data_dir)
    test_x, test_y = load_arrays("cifar10", "test", data_dir=cifar10_data_dir)
    assert train_x.shape == (50000, 32, 32, 3) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 32, 32, 3) and test_x.dtype == np.uint8
    assert train_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [1000] * 10)
    # Stored order: classes in label order, files by name within a class.
    np.testing.assert_array_equal(train_y, np.repeat(np.arange(10), 5000))
    first_train, first_test, last_test = _decode_from_tar(
        cifar10_archive,
        [
            "cifar10/train/airplane/0000.jpg",
            "cifar10/test/airplane/0000.jpg",
            "cifar10/test/truck/0999.jpg",
        ],
    )
    np.testing.assert_array_equal(train_x[0], first_train)
    np.testing.assert_array_equal(test_x[0], first_test)
    np.testing.assert_array_equal(test_x[-1], last_test)
    assert 100 < train_x.mean() < 150  # real photos, not blank


def test_cifar10_labels_follow_the_standard_class_order(cifar10_data_dir):
    source = open_split("cifar10", "test", data_dir=cifar10_data_dir)
    names = source.dataset_info.features["label"].names
    assert tuple(names) == get_spec("cifar10").class_names
    assert names[0] == "airplane" and names[9] == "truck"


def test_cifar10_dataset_info(cifar10_archive, cifar10_data_dir):
    info = dataset_info("cifar10", data_dir=cifar10_data_dir)
    assert info == {
        "name": "cifar10",
        "splits": {"train": 50000, "test": 10000},
        "num_classes": 10,
        "image_shape": [32, 32, 3],
        "source": f"archive:{cifar10_archive.resolve()}",
    }
