"""Reading a split a batch at a time (ddjax.data.stream) and the global batch assembled from this
process's rows (ddjax.mesh.local_rows / from_local_rows). One process here; two in
tests/test_scaling.py."""

import itertools
import threading

import ml_collections
import numpy as np
import pytest

from ddjax import mesh
from ddjax.data import load_arrays, open_split
from ddjax.data.pipeline import load_split, open_rows
from ddjax.data.stream import BatchStream, LoadedSplit, SplitReader


class Records(list):
    """``{'image', 'label'}`` records, record i an image filled with i; remembers what was read."""

    def __init__(self, n):
        super().__init__({"image": np.full((2, 3, 3), i, np.uint8), "label": i} for i in range(n))
        self.asked = []

    def __getitems__(self, indices):
        self.asked.append(list(indices))
        return [self[i] for i in indices]


def test_open_rows_reads_on_demand_the_rows_load_split_returns(make_archive, tmp_path):
    archive = make_archive(counts={"train": 5, "test": 2})
    section = ml_collections.ConfigDict({"name": "toy", "archive": str(archive.root),
                                         "data_dir": str(tmp_path / "d"), "train_subset": 7,
                                         "stream": False})
    loaded = open_rows(section, "train")
    section.stream = True
    reader = open_rows(section, "train")
    assert isinstance(loaded, LoadedSplit) and isinstance(reader, SplitReader)
    images, labels = load_split(section, "train")
    assert len(reader) == len(loaded) == len(labels) == 7
    rows = np.array([6, 0, 3, 3, 5])
    for split in (reader, loaded):
        got_images, got_labels = split.read(rows)
        np.testing.assert_array_equal(got_images, images[rows])
        np.testing.assert_array_equal(got_labels, labels[rows])
    np.testing.assert_array_equal(reader.read_labels(rows, chunk=2), labels[rows])
    assert len(open_rows(section, "test")) == 6  # train_subset keeps train rows only


def test_reader_resizes_like_load_arrays(make_archive, tmp_path):
    archive = make_archive(counts={"train": 2, "test": 1}, sizes=[(6, 5), (9, 7)])
    where = {"archive": archive.root, "data_dir": tmp_path / "d"}
    images, labels = load_arrays("toy", "train", resize_to=(4, 4), **where)
    reader = SplitReader(open_split("toy", "train", **where), resize_to=(4, 4))
    got_images, got_labels = reader.read(np.arange(len(labels))[::-1])
    np.testing.assert_array_equal(got_images, images[::-1])
    np.testing.assert_array_equal(got_labels, labels[::-1])


def test_batch_stream_yields_this_process_rows_of_each_batch():
    records = Records(20)
    reader = SplitReader(records, keep=np.arange(0, 20, 2))  # row r is record 2r
    batches = [np.array([9, 8, 7, 6]), np.array([0, 5, 1, 4])]
    held = np.array([1, 2])
    out = list(BatchStream(reader, batches, held))
    assert [labels.tolist() for _, labels in out] == [[16, 14], [10, 2]]
    assert [images[:, 0, 0, 0].tolist() for images, _ in out] == [[16, 14], [10, 2]]
    assert records.asked == [[16, 14], [10, 2]]  # only the held rows were read


def test_an_error_while_reading_is_raised_in_the_consumer_as_it_was():
    error = ValueError("record 3 is corrupt")

    class Failing:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 3:
                raise error
            return {"image": np.zeros((2, 2, 3), np.uint8), "label": i}

    stream = BatchStream(SplitReader(Failing()), [np.array([0, 1]), np.array([3, 4])], np.arange(2))
    assert next(stream)[1].tolist() == [0, 1]
    with pytest.raises(ValueError) as caught:
        next(stream)
    assert caught.value is error
    assert list(stream) == []


def test_closing_stops_the_reading_thread_and_it_reads_at_most_two_batches_ahead():
    records = Records(8)
    before = set(threading.enumerate())
    endless = (np.array([i % 8]) for i in itertools.count())
    with BatchStream(SplitReader(records), endless, np.arange(1), ahead=1) as stream:
        [started] = set(threading.enumerate()) - before
        assert next(stream)[1].tolist() == [0]
    assert not started.is_alive()
    assert 1 <= len(records.asked) <= 3  # the one taken, one waiting, one read meanwhile


def test_on_one_process_the_rows_are_all_and_the_batch_is_shard_of_it():
    batch = {"x": np.arange(24, dtype=np.float32).reshape(8, 3), "y": np.arange(8)}
    np.testing.assert_array_equal(mesh.local_rows(8), np.arange(8))
    placed, expected = mesh.from_local_rows(batch, 8), mesh.shard(batch)
    for name, value in batch.items():
        assert placed[name].sharding == expected[name].sharding
        np.testing.assert_array_equal(mesh.fetch(placed[name]), value)
