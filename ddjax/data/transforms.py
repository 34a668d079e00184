"""Deterministic image transforms: normalisation, LANCZOS resizing and ZCA whitening.

`normalize`, `denormalize`, `zca_whiten` and `zca_unwhiten` use only array methods and
operators, so they accept numpy or JAX arrays and return the same kind (usable under `jax.jit`).
`resize_images` and `fit_zca` are host-side numpy/PIL code run once over a dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from ddjax.errors import DdjaxError

_FIT_CHUNK = 4096


def normalize(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 NHWC (or any HWC-last) images -> float32 `(x / 255 - mean) / std` per channel."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (images.astype(np.float32) / np.float32(255.0) - mean) / std


def denormalize(x, mean: Sequence[float], std: Sequence[float]):
    """Undo `normalize` up to the 1/255 scaling: returns float pixels in [0, 1] scale,
    `x * std + mean` (so `denormalize(normalize(u8)) * 255 == u8` up to rounding)."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return x * std + mean


def resize_images(images, size: tuple[int, int]) -> np.ndarray:
    """Resize each uint8 HWC image to `size` = (H, W) with PIL LANCZOS, as torchvision's
    `Resize(size, interpolation=LANCZOS)` does on PIL images; returns uint8 NHWC.

    `images` is a uint8 NHWC array or a sequence of HWC arrays of any sizes.
    """
    height, width = size
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(image)).resize((width, height), Image.Resampling.LANCZOS)
            )
            for image in images
        ]
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Zca:
    """A fitted ZCA transform over flattened HWC images (float32; a JAX pytree).

    Attributes:
      mean: (D,) per-feature mean of the fitting data, D = H*W*C.
      whiten: (D, D) symmetric matrix U diag(1/sqrt(S+eps)) U^T.
      unwhiten: (D, D) its inverse U diag(sqrt(S+eps)) U^T.
    """

    mean: np.ndarray
    whiten: np.ndarray
    unwhiten: np.ndarray


def fit_zca(x, eps: float = 0.1) -> Zca:
    """Fit ZCA whitening to images `x` (N, H, W, C), regularised like kornia's `ZCAWhitening`
    (the one MTT uses, eps=0.1).

    In float64: centre the flattened images, covariance with the unbiased N-1 denominator,
    eigendecomposition C = U diag(S) U^T, then whiten = U diag(1/sqrt(S+eps)) U^T and
    unwhiten = U diag(sqrt(S+eps)) U^T; stored as float32. Whitening is equivariant to
    permuting features, so the result on images equals that of kornia on NCHW tensors.
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise DdjaxError(f"ZCA needs at least 2 images, got an array of shape {x.shape}")
    if eps < 0:
        raise DdjaxError(f"ZCA eps must be non-negative, got {eps}")
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(axis=0, dtype=np.float64)
    cov = np.zeros((flat.shape[1], flat.shape[1]), dtype=np.float64)
    for start in range(0, flat.shape[0], _FIT_CHUNK):
        centred = flat[start : start + _FIT_CHUNK].astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= flat.shape[0] - 1
    eigenvalues, u = np.linalg.eigh(cov)
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # rounding can make tiny ones negative
    root = np.sqrt(eigenvalues + eps)
    return Zca(
        mean=mean.astype(np.float32),
        whiten=((u / root) @ u.T).astype(np.float32),
        unwhiten=((u * root) @ u.T).astype(np.float32),
    )


def zca_whiten(x, zca: Zca):
    """Whiten images `x` (N, H, W, C) with a fitted `Zca`; same shape out."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - zca.mean) @ zca.whiten).reshape(x.shape)


def zca_unwhiten(x, zca: Zca):
    """Map whitened images back to the original space (the inverse of `zca_whiten`)."""
    flat = x.reshape(x.shape[0], -1)
    return (flat @ zca.unwhiten + zca.mean).reshape(x.shape)


def zca_digest(zca: Zca) -> str:
    """sha256 hex digest of the ZCA arrays (dtype, shape and bytes), to record with artifacts
    that used it so a mismatched ZCA is detected."""
    digest = hashlib.sha256()
    for field in dataclasses.fields(zca):
        array = np.ascontiguousarray(np.asarray(getattr(zca, field.name)))
        digest.update(f"{field.name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
