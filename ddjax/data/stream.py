"""A split read a batch at a time, each process only its rows: what stages do with ``data.stream``
instead of loading the whole split (an ImageNet-scale set does not fit in host memory, and on many
hosts each process needs only its devices' rows of a batch).

:class:`SplitReader` reads rows of a split on demand from its random-access source (a TFDS data
source, or any sequence of ``{'image', 'label'}`` records); :class:`LoadedSplit` reads the same way
from a split loaded whole. :class:`BatchStream` reads this
process's rows of each global batch in a background thread, a batch or two before they are asked
for, so decoding overlaps the device's work; :func:`ddjax.mesh.from_local_rows` then
assembles the global batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Sequence

import numpy as np

from ddjax.data.sources import iterate_batches, resizer

_END = object()  # the producer read every batch


class SplitReader:
    """Rows of a split: row ``i`` is record ``keep[i]`` of ``records`` (record ``i`` when ``keep``
    is None), its image resized with LANCZOS to ``resize_to`` when given."""

    def __init__(self, records, keep: np.ndarray | None = None,
                 resize_to: tuple[int, int] | None = None):
        self.records, self.keep, self.transform = records, keep, resizer(resize_to)

    def __len__(self) -> int:
        return len(self.records) if self.keep is None else len(self.keep)

    def read(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 NHWC, labels int32)`` of ``rows``, in the given order."""
        rows = np.asarray(rows, np.int64)
        indices = rows if self.keep is None else self.keep[rows]
        return next(iterate_batches(self.records, len(indices), indices,
                                    transform=self.transform))

    def read_labels(self, rows: Sequence[int] | np.ndarray, chunk: int = 4096) -> np.ndarray:
        """The labels of ``rows`` (int32), read ``chunk`` records at a time."""
        rows = np.asarray(rows, np.int64)
        return np.concatenate([self.read(rows[start:start + chunk])[1]
                               for start in range(0, len(rows), chunk)])


class LoadedSplit:
    """A split loaded whole: :class:`SplitReader`'s ``len``, ``read`` and ``read_labels`` over
    arrays in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        return self.images[rows], self.labels[rows]

    def read_labels(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.labels[np.asarray(rows, np.int64)]


def in_memory(images: np.ndarray) -> LoadedSplit:
    """Images already in memory, read as a split's rows (their labels unused)."""
    return LoadedSplit(images, np.zeros(len(images), np.int32))


class _Failed:
    """An error of the reading thread, on its way to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _offer(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` once there is room; False when the consumer stopped first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def _produce(reader: SplitReader, index_batches: Iterable, rows: np.ndarray, out: queue.Queue,
             stop: threading.Event) -> None:
    try:
        for batch in index_batches:
            if not _offer(out, reader.read(np.asarray(batch)[rows]), stop):
                return
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
        _offer(out, _Failed(error), stop)
        return
    _offer(out, _END, stop)


class BatchStream:
    """``reader.read(batch[rows])`` for each global batch (an int array of rows of ``reader``) of
    ``index_batches``, in order: ``rows`` are the positions within a batch this process holds
    (:func:`ddjax.mesh.local_rows`). A background thread reads ahead: up to ``ahead`` batches
    wait, read, while it reads the next; an error there is raised here, as it was raised. Closing
    the iterator (also ``with``, or dropping it) stops the thread."""

    def __init__(self, reader: SplitReader, index_batches: Iterable, rows: np.ndarray,
                 ahead: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=max(int(ahead), 1))
        self._stop = threading.Event()
        # The thread holds the queue and the event, not this object: dropping it stops the thread.
        work = (reader, index_batches, np.asarray(rows), self._queue, self._stop)
        self._thread = threading.Thread(target=_produce, args=work, daemon=True,
                                        name="ddjax-stream")
        self._thread.start()

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failed):
            self.close()
            if item is _END:
                raise StopIteration
            raise item.error
        return item

    def close(self) -> None:
        """Stop the reading thread and wait for it (it finishes the read in progress)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()
