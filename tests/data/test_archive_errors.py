"""Finding archives, and the one-line errors for everything that can be wrong with them."""

import shutil

import pytest

import ddjax.data.sources as sources
from ddjax.data.archive import default_archive_dir
from ddjax.data import find_archive, load_arrays, open_split, prepare_archive
from ddjax.errors import DdjaxError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(DdjaxError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_archive_dir_env_finds_tagged_plain_and_folder_archives(
    make_archive, tmp_path, monkeypatch
):
    archive = make_archive()
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("DDJAX_ARCHIVE_DIR", str(store))
    assert find_archive("toy") is None
    archive.tar_gz(store / "toy-png.tar.gz")
    assert find_archive("toy") == store / "toy-png.tar.gz"
    archive.tar_gz(store / "toy.tar.gz")
    assert find_archive("toy") == store / "toy.tar.gz"  # the exact name wins
    (store / "toy.tar.gz").unlink()
    archive.tar_gz(store / "toy-jpeg.tar.gz")
    assert "several archives for toy" in _error(find_archive, "toy")
    for tagged in store.iterdir():
        tagged.unlink()
    shutil.copytree(archive.root, store / "toy")
    assert find_archive("toy") == store / "toy"
    assert find_archive("to") is None and find_archive("toyx") is None


def test_explicit_archive_wins_and_may_be_a_folder_of_archives(make_archive, tmp_path, monkeypatch):
    archive = make_archive()
    monkeypatch.setenv("DDJAX_ARCHIVE_DIR", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    archive.tar_gz(tmp_path / "store" / "toy.tar.gz")
    assert find_archive("toy", archive.root) == archive.root
    mine = tmp_path / "mine"
    mine.mkdir()
    archive.tar_gz(mine / "toy-v2.tar.gz")
    assert find_archive("toy", mine) == mine / "toy-v2.tar.gz"
    assert "has no train/ and test/" in _error(find_archive, "other", mine)


def test_shared_data_folder_is_the_default(cifar10_archive):
    assert find_archive("cifar10") is not None


def test_missing_archive_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("DDJAX_ARCHIVE_DIR", str(tmp_path / "nowhere"))
    message = _error(open_split, "tiny_imagenet", "train", data_dir=tmp_path)
    assert str(tmp_path / "nowhere") in message and "DDJAX_ARCHIVE_DIR" in message
    assert str(default_archive_dir()) in message
    assert "--archive" in message
    assert "does not exist" in _error(open_split, "toy", "train", archive=tmp_path / "no.tar")


def test_tfds_failure_is_reported_with_the_places_looked(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'data.caltech.edu'\nretries exhausted")

    monkeypatch.setattr(sources.tfds, "data_source", offline)
    message = _error(open_split, "cub", "train", data_dir=tmp_path)
    assert "caltech_birds2011" in message and "ConnectionError" in message
    assert "--archive" in message and str(tmp_path) in message


def test_unknown_name_without_archive_lists_known_names(tmp_path):
    message = _error(open_split, "cifar11", "train", data_dir=tmp_path)
    assert "unknown dataset 'cifar11'" in message and "cifar10" in message
    assert "unknown dataset 'Bad/Name'" in _error(open_split, "Bad/Name", "train")


def test_missing_split_folder_is_a_bad_layout(make_archive, tmp_path):
    archive = make_archive()
    shutil.rmtree(archive.folder / "test")
    assert "bad layout" in _error(prepare_archive, "toy", archive.root, data_dir=tmp_path)


def test_file_outside_class_folders_is_a_bad_layout(make_archive, tmp_path):
    archive = make_archive()
    (archive.folder / "train" / "stray.png").write_bytes(b"x")
    message = _error(prepare_archive, "toy", archive.root, data_dir=tmp_path)
    assert "train/stray.png" in message and "outside a class folder" in message


def test_classes_differing_between_splits_is_a_bad_layout(make_archive, tmp_path):
    archive = make_archive()
    shutil.rmtree(archive.folder / "test" / "emu")
    message = _error(prepare_archive, "toy", archive.root, data_dir=tmp_path)
    assert "different class folders (emu)" in message


def test_empty_class_folder(make_archive, tmp_path):
    archive = make_archive()
    (archive.folder / "train" / "yak").mkdir()
    (archive.folder / "test" / "yak").mkdir()
    (archive.folder / "test" / "yak" / "notes.txt").write_text("no images")
    message = _error(prepare_archive, "toy", archive.root, data_dir=tmp_path)
    assert "empty class folder" in message and "yak" in message


def test_registered_class_names_must_match_the_folders(make_archive, tmp_path):
    archive = make_archive(classes=("airplane", "cat", "kangaroo"))
    message = _error(load_arrays, "cifar10", "train", archive=archive.root, data_dir=tmp_path)
    assert "do not match" in message and "kangaroo" in message and "automobile" in message


def test_unreadable_image_is_named(make_archive, tmp_path):
    archive = make_archive()
    (archive.folder / "train" / "dog" / "001.png").write_bytes(b"not an image at all")
    tar = archive.tar_gz(tmp_path / "toy.tar.gz")
    for source in (archive.root, tar):
        message = _error(prepare_archive, "toy", source, data_dir=tmp_path / source.name)
        assert "unreadable image" in message and "dog/001.png" in message


def test_archive_file_that_is_not_a_tar(tmp_path):
    fake = tmp_path / "toy.tar.gz"
    fake.write_bytes(b"definitely not gzip")
    assert "cannot read archive" in _error(prepare_archive, "toy", fake, data_dir=tmp_path)
    (tmp_path / "toy.zip").write_bytes(b"")
    assert "not a .tar" in _error(find_archive, "toy", tmp_path / "toy.zip")


def test_registered_class_count_must_match_the_folders(make_archive, tmp_path):
    archive = make_archive(classes=("n01", "n02"))
    message = _error(load_arrays, "tiny_imagenet", "train", archive=archive.root, data_dir=tmp_path)
    assert "2 class folders, expected 200" in message


def test_bad_split_is_reported_before_any_preparation(tmp_path, cifar10_archive):
    message = _error(load_arrays, "cifar10", "val", archive=cifar10_archive, data_dir=tmp_path)
    assert "unknown split 'val'" in message
    assert not (tmp_path / "image_folder_archive").exists()
