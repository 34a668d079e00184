"""Isolation for data tests: no user archive folder, prepared data under tmp, and no TFDS
download attempts (they retry for minutes without a network)."""

import pytest
import tensorflow_datasets as tfds


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DDJAX_ARCHIVE_DIR", raising=False)
    monkeypatch.setenv("DDJAX_DATA_DIR", str(tmp_path / "ddjax_tfds"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"a data test reached tfds.data_source{args}")

    monkeypatch.setattr(tfds, "data_source", no_download)
