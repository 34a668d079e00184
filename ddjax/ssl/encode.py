"""Eval-mode features of an encoder over many images: the teacher's k-NN monitor and MKDT's
representations. Forward only, so convolutions run as ``lax.conv`` whatever the model's
``conv_impl`` (XLA's own convolution is the fastest forward on every backend here). Each batch
is split over the mesh's data axis (docs/scaling.md), each process preparing only its rows of it;
every process gets all the features. The images are an array in memory (:func:`encode_images`)
or rows read from the source batch by batch (:func:`encode_rows`, ``data.stream``);
:func:`map_rows` is that reading loop for any jitted function of a batch (LGM's embeddings)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from ddjax import mesh
from ddjax.data.stream import BatchStream, LoadedSplit, SplitReader, in_memory
from ddjax.data.transforms import normalize
from ddjax.errors import DdjaxError
from ddjax.models.batched import batch_indices, map_batches


@functools.lru_cache(maxsize=16)
def _eval_apply(model, device_mesh):
    if "conv_impl" in {f.name for f in dataclasses.fields(model)}:
        model = model.clone(conv_impl="lax")
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False),
                   out_shardings=mesh.replicated(device_mesh))


def encode_images(model, variables, images_NHWC, mean, std, batch_size: int = 500,
                  desc: str | None = None) -> np.ndarray:
    """Eval-mode features (float32 [N, D]) of uint8 images, normalised ``(x/255 - mean)/std``,
    in the given order, in batches of ``batch_size`` (rounded up to a multiple of the mesh's
    data axis; the last one padded: one compilation);
    no augmentation, BatchNorm on its running statistics. ``desc`` shows a progress bar."""
    if np.ndim(images_NHWC) != 4 or images_NHWC.shape[0] == 0:
        raise DdjaxError(f"encode_images needs a non-empty [N, H, W, C] batch of images, got shape "
                         f"{tuple(np.shape(images_NHWC))}")
    return encode_rows(model, variables, in_memory(images_NHWC), np.arange(len(images_NHWC)),
                       mean, std, batch_size, desc)


def encode_rows(model, variables, reader: LoadedSplit | SplitReader, indices, mean, std,
                batch_size: int = 500, desc: str | None = None) -> np.ndarray:
    """:func:`encode_images` of ``reader.read(indices)``'s images, read batch by batch: each
    process reads only its rows of each batch, a batch or two ahead in a background thread (for a
    :class:`SplitReader`, ``data.stream``, from the source: the images are never all in memory)."""
    indices = np.asarray(indices, np.int64)
    if indices.ndim != 1 or len(indices) == 0:
        raise DdjaxError(f"encode_rows needs a non-empty list of rows, got shape {indices.shape}")
    device_mesh = mesh.current()
    apply, variables = _eval_apply(model, device_mesh), mesh.replicate(variables, device_mesh)
    batch = mesh.divisible_batch(min(batch_size, len(indices)), device_mesh)
    out = map_rows(lambda x: apply(variables, x), reader, indices, batch,
                   prepare=lambda local: normalize(local, mean, std), desc=desc)
    return np.asarray(out.reshape(len(indices), -1), np.float32)


def map_rows(fn: Callable[[jax.Array], jax.Array], reader: LoadedSplit | SplitReader, indices,
             batch: int, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
             desc: str | None = None) -> np.ndarray:
    """``fn`` (a jitted function of a global batch, its output replicated) over the images of
    ``reader.read(indices)`` in batches of ``batch`` (a multiple of the mesh's data axis; the last
    padded), concatenated. Each process reads only its rows of each batch
    (:func:`ddjax.mesh.local_rows`) in a :class:`BatchStream` thread, ``prepare``s them, and the
    global batch is assembled from every process's rows."""
    indices = np.asarray(indices, np.int64)
    held = mesh.local_rows(batch)
    batches = (indices[idx] for idx, _ in batch_indices(len(indices), batch))
    parts = (images for images, _ in BatchStream(reader, batches, held))

    def run(local):
        return fn(mesh.from_local_rows(prepare(local) if prepare else local, batch))

    # ``parts`` holds the batches map_batches takes (batch_indices), in the same order.
    return map_batches(run, len(indices), batch, lambda idx: next(parts), desc=desc)
