"""The TFDS fallback: which builder, split and data dir are asked for (TFDS itself is stubbed:
it cannot download here)."""

import pytest

import ddjax.data.sources as sources
from ddjax.data import open_split


@pytest.fixture
def tfds_calls(monkeypatch):
    calls = []

    def fake_data_source(name, *, split, data_dir):
        calls.append((name, split, data_dir))
        return [{"image": None, "label": 0}]

    monkeypatch.setattr(sources.tfds, "data_source", fake_data_source)
    return calls


def test_tfds_split_names_and_data_dir_are_passed_through(tfds_calls, tmp_path):
    open_split("imagenet2012", "test", data_dir=tmp_path)
    open_split("cub", "train", data_dir=tmp_path)
    assert tfds_calls == [
        ("imagenet2012", "validation", str(tmp_path)),
        ("caltech_birds2011", "train", str(tmp_path)),
    ]


def test_tfds_data_dir_defaults_to_the_env_then_tfds_own(tfds_calls, tmp_path, monkeypatch):
    monkeypatch.setenv("DDJAX_DATA_DIR", str(tmp_path / "env"))
    open_split("dogs", "test")
    monkeypatch.delenv("DDJAX_DATA_DIR")
    open_split("dogs", "test")
    assert tfds_calls == [
        ("stanford_dogs", "test", str(tmp_path / "env")),
        ("stanford_dogs", "test", None),
    ]


def test_a_found_archive_wins_over_tfds(tfds_calls, make_archive, tmp_path, monkeypatch):
    classes = tuple(f"c{i:03d}" for i in range(102))
    archive = make_archive(name="flowers", classes=classes, counts={"train": 1, "test": 1})
    monkeypatch.setenv("DDJAX_ARCHIVE_DIR", str(archive.root.parent))
    source = open_split("flowers", "train", data_dir=tmp_path / "d")
    assert len(source) == 102 and tfds_calls == []
