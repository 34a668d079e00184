"""Preparing synthetic image-folder archives and reading them back."""

import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

import ddjax.data.prepare as prepare
from ddjax.data import (
    IMAGENET_MEAN,
    dataset_info,
    iterate_batches,
    load_arrays,
    open_split,
    prepare_archive,
    spec_for,
)
from ddjax.errors import DdjaxError


def _expected(archive, split):
    return np.stack(archive.images[split]), np.array(archive.labels[split])


def test_folder_loads_with_counts_order_and_exact_pixels(make_archive, tmp_path):
    archive = make_archive(classes=("dog", "cat", "emu"), counts={"train": 3, "test": 2})
    for split, count in (("train", 9), ("test", 6)):
        images, labels = load_arrays("toy", split, archive=archive.root, data_dir=tmp_path / "d")
        want_images, want_labels = _expected(archive, split)
        assert images.shape == (count, 6, 5, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(labels, want_labels)  # cat=0, dog=1, emu=2
        np.testing.assert_array_equal(images, want_images)


def test_tar_gz_equals_folder_whatever_the_stored_order(make_archive, tmp_path):
    archive = make_archive()
    tar = archive.tar_gz(tmp_path / "toy-png.tar.gz", reverse=True)
    for split in ("train", "test"):
        from_tar = load_arrays("toy", split, archive=tar, data_dir=tmp_path / "a")
        from_dir = load_arrays("toy", split, archive=archive.root, data_dir=tmp_path / "b")
        for a, b in zip(from_tar, from_dir):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(from_tar[0], _expected(archive, split)[0])


def test_given_class_names_fix_the_label_order(make_archive, tmp_path):
    archive = make_archive(classes=("a", "b", "c"), counts={"train": 1, "test": 1})
    folder = prepare_archive(
        "toy", archive.root, class_names=("c", "a", "b"), data_dir=tmp_path / "d"
    )
    source = open_split("toy", "train", data_dir=tmp_path / "d")
    assert source.dataset_info.features["label"].names == ["c", "a", "b"]
    images = [source[i]["image"] for i in range(3)]
    want = archive.images["train"]  # written in sorted order a, b, c
    for got, expected in zip(images, [want[2], want[0], want[1]]):
        np.testing.assert_array_equal(got, expected)
    assert folder == prepare.prepared_dir("toy", tmp_path / "d")


def test_preparing_twice_does_not_rewrite(make_archive, tmp_path, monkeypatch):
    archive = make_archive()
    folder = prepare_archive("toy", archive.root, data_dir=tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("re-read the archive")

    monkeypatch.setattr(prepare, "read_layout", fail)
    assert prepare_archive("toy", archive.root, data_dir=tmp_path) == folder
    load_arrays("toy", "train", archive=archive.root, data_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_mixed_sizes_use_encoded_images(make_archive, tmp_path):
    sizes = [(6, 5), (9, 4), (3, 8)]
    archive = make_archive(sizes=sizes, fmt="JPEG")
    source = open_split("toy", "train", archive=archive.root, data_dir=tmp_path)
    assert source.dataset_info.features["image"].shape == (None, None, 3)
    for i, expected in enumerate(archive.images["train"]):
        np.testing.assert_array_equal(source[i]["image"], expected)
    with pytest.raises(DdjaxError, match="different sizes"):
        load_arrays("toy", "train", data_dir=tmp_path)
    images, _ = load_arrays("toy", "train", data_dir=tmp_path, resize_to=(4, 4))
    for got, original in zip(images, archive.images["train"]):
        expected = Image.fromarray(original).resize((4, 4), resample=Image.LANCZOS)
        np.testing.assert_array_equal(got, np.asarray(expected))


def test_uniform_sizes_are_stored_as_tensors_and_resize_to_works(make_archive, tmp_path):
    archive = make_archive(sizes=[(8, 8)])
    source = open_split("toy", "test", archive=archive.root, data_dir=tmp_path)
    assert source.dataset_info.features["image"].shape == (8, 8, 3)
    images, _ = load_arrays("toy", "test", data_dir=tmp_path, resize_to=(3, 5))
    assert images.shape == (6, 3, 5, 3)
    expected = Image.fromarray(archive.images["test"][0]).resize((5, 3), resample=Image.LANCZOS)
    np.testing.assert_array_equal(images[0], np.asarray(expected))


def test_non_rgb_images_are_converted_to_rgb(make_archive, tmp_path):
    archive = make_archive(counts={"train": 1, "test": 1}, wrapper=False)
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
    Image.fromarray(gray, mode="L").save(archive.folder / "train" / "cat" / "000.png")
    images, _ = load_arrays("toy", "train", archive=archive.root, data_dir=tmp_path)
    np.testing.assert_array_equal(images[0], np.stack([gray] * 3, axis=-1))


def test_unregistered_archive_gets_an_adhoc_spec_and_info(make_archive, tmp_path):
    archive = make_archive(classes=("b", "a"))
    spec = spec_for("toy", archive=archive.root, data_dir=tmp_path)
    assert spec.class_names == ("a", "b") and spec.num_classes == 2
    assert spec.image_size == (6, 5) and spec.mean == IMAGENET_MEAN
    info = dataset_info("toy", data_dir=tmp_path)  # found again from the prepared data
    assert info == {
        "name": "toy",
        "splits": {"train": 6, "test": 4},
        "num_classes": 2,
        "image_shape": [6, 5, 3],
        "source": f"archive:{archive.root.resolve()}",
    }


def test_iterate_batches_follows_the_given_indices(make_archive, tmp_path):
    archive = make_archive()
    source = open_split("toy", "train", archive=archive.root, data_dir=tmp_path)
    want_images, want_labels = _expected(archive, "train")
    indices = [8, 0, 3, 3, 5]
    batches = list(iterate_batches(source, 2, indices))
    assert [len(y) for _, y in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), want_images[indices])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), want_labels[indices])
    with pytest.raises(DdjaxError, match="batch size"):
        next(iterate_batches(source, 0, indices))


def test_explicit_archive_must_match_an_existing_preparation(make_archive, tmp_path):
    archive = make_archive()
    prepare_archive("toy", archive.root, data_dir=tmp_path / "d")
    other = archive.tar_gz(tmp_path / "other.tar.gz")
    with pytest.raises(DdjaxError, match="was prepared from") as err:
        open_split("toy", "train", archive=other, data_dir=tmp_path / "d")
    assert "\n" not in str(err.value)


def test_failed_preparation_leaves_nothing_prepared(make_archive, tmp_path):
    archive = make_archive()
    broken = archive.folder / "test" / "emu" / "001.png"
    good = broken.read_bytes()
    broken.write_bytes(good[:60])  # valid header, truncated pixels: fails while generating
    with pytest.raises(DdjaxError, match="unreadable image .*001.png") as err:
        prepare_archive("toy", archive.root, data_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert not prepare.is_prepared("toy", tmp_path)
    assert not list((tmp_path / "image_folder_archive" / "toy").iterdir())  # no tmp dir left
    broken.write_bytes(good)
    prepare_archive("toy", archive.root, data_dir=tmp_path)
    assert len(open_split("toy", "test", data_dir=tmp_path)) == 6


_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import ddjax.data.prepare as prepare

    decode = prepare.open_image
    calls = []

    def stall(data, where):
        calls.append(where)
        if len(calls) == 4:
            print("generating", flush=True)
            time.sleep(600)
        return decode(data, where)

    prepare.open_image = stall
    prepare.prepare_archive("toy", Path(sys.argv[1]), data_dir=sys.argv[2])
    """
)


def _wait_for_line(stream, wanted, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        line = stream.readline() if ready else ""
        if line.strip() == wanted:
            return
        assert line, f"the child ended or stalled before printing {wanted!r}"
    raise AssertionError(f"no {wanted!r} within {timeout} s")


def test_killed_preparation_is_not_taken_for_prepared(make_archive, tmp_path):
    archive = make_archive()
    data_dir = tmp_path / "d"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(archive.root), str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_for_line(child.stdout, "generating")
        dataset_dir = data_dir / "image_folder_archive" / "toy"
        # Mid-generation, TFDS writes only into a temporary sibling of the version folder.
        assert [p.name.startswith("incomplete.") for p in dataset_dir.iterdir()] == [True]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not prepare.is_prepared("toy", data_dir)
    assert not prepare.prepared_dir("toy", data_dir).exists()
    images, labels = load_arrays("toy", "train", archive=archive.root, data_dir=data_dir)
    np.testing.assert_array_equal(labels, archive.labels["train"])


def test_losing_a_preparation_race_uses_the_winners_copy(make_archive, tmp_path, monkeypatch):
    archive = make_archive()
    winner = prepare_archive("toy", archive.root, data_dir=tmp_path / "winner")

    def lose_race(self, **kwargs):
        # Another process finishes first; our rename onto its folder then fails.
        target = prepare.prepared_dir("toy", tmp_path / "d")
        shutil.copytree(winner, target)
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(prepare.ImageFolderArchive, "download_and_prepare", lose_race)
    assert prepare_archive("toy", archive.root, data_dir=tmp_path / "d").is_dir()
    assert len(open_split("toy", "train", data_dir=tmp_path / "d")) == 9


def test_other_os_errors_while_preparing_propagate(make_archive, tmp_path, monkeypatch):
    archive = make_archive()

    def disk_full(self, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare.ImageFolderArchive, "download_and_prepare", disk_full)
    with pytest.raises(OSError, match="No space"):
        prepare_archive("toy", archive.root, data_dir=tmp_path)


def test_iterate_batches_accepts_plain_sequences_and_transforms():
    records = [{"image": np.full((4, 4, 3), i, np.uint8), "label": i} for i in range(5)]
    (x, y), = list(iterate_batches(records, 8, [4, 1], transform=lambda im: im[:2, :3]))
    assert x.shape == (2, 2, 3, 3) and y.tolist() == [4, 1]
    assert np.all(x[0] == 4) and np.all(x[1] == 1)
