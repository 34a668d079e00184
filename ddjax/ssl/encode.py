"""Eval-mode features of an encoder over many images: the teacher's k-NN monitor and MKDT's
representations. Forward only, so convolutions run as ``lax.conv`` whatever the model's
``conv_impl`` (XLA's own convolution is the fastest forward on every backend here). Each batch
is split over the mesh's data axis (docs/scaling.md); every process gets all the features."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from ddjax import mesh
from ddjax.data.transforms import normalize
from ddjax.errors import DdjaxError
from ddjax.models.batched import map_batches


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
    device_mesh = mesh.current()
    apply, variables = _eval_apply(model, device_mesh), mesh.replicate(variables, device_mesh)
    n = images_NHWC.shape[0]
    batch = mesh.divisible_batch(min(batch_size, n), device_mesh)
    features = map_batches(lambda x: apply(variables, mesh.shard(x, device_mesh)), n, batch,
                           lambda idx: normalize(np.asarray(images_NHWC[idx]), mean, std),
                           desc=desc)
    return np.asarray(features.reshape(n, -1), np.float32)
