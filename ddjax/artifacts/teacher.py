"""The teacher artifact: an encoder's variables plus a JSON description, written by
``ddjax teacher`` and read by ``ddjax represent`` (and anything else that needs the frozen teacher).

``<dir>/encoder`` is a ``save_pytree`` of ``{'params': ..., 'batch_stats'?: ...}`` and
``<dir>/encoder.json`` says how to rebuild the network (registry name, keyword arguments, init
scheme, image size), where the weights came from, the teacher's k-NN accuracy, its feature size and
``sha256``: a digest of the encoder arrays (every leaf's path, dtype, shape and bytes, in sorted
path order), which later stages record as the teacher they used.

The JSON file is written first and the encoder directory renamed into place last, so ``encoder``
existing means the artifact is complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.data.transforms import normalize
from ddjax.errors import DdjaxError
from ddjax.models import build_model
from ddjax.models.registry import dummy_input
from ddjax.runlog import progress

ENCODER = "encoder"
META = "encoder.json"


def _leaves_by_path(tree, prefix: str = ""):
    for key in sorted(tree):
        value = tree[key]
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _leaves_by_path(dict(value.items()), path)
        else:
            yield path, value


def encoder_digest(variables) -> str:
    """sha256 of the encoder arrays: path, dtype, shape and bytes of each leaf, paths sorted."""
    digest = hashlib.sha256()
    for path, leaf in _leaves_by_path(variables):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def encoder_variables(params, batch_stats) -> dict:
    """``{'params', 'batch_stats'}`` as numpy arrays; no 'batch_stats' for a network without any."""
    variables = {"params": params}
    if batch_stats and jax.tree_util.tree_leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    return jax.tree_util.tree_map(np.asarray, variables)


def build_encoder(meta: dict):
    """The headless network an artifact (or a teacher config turned into ``meta``) describes."""
    return build_model(meta["model"], num_outputs=0, image_size=tuple(meta["image_size"]),
                       conv_impl=meta.get("conv_impl", "auto"),
                       init=meta.get("init") or None, **dict(meta.get("model_kwargs", {})))


def feature_dim(model, image_size) -> int:
    """Size of the encoder's output for one image, computed from shapes only."""
    x = dummy_input(image_size)
    shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), shapes)
    return int(np.prod(out.shape[1:]))


def is_complete(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / ENCODER).exists() and (directory / META).exists()


def read_meta(directory: str | Path) -> dict:
    """The artifact's JSON description; DdjaxError when there is no complete artifact there."""
    directory = Path(directory)
    if not is_complete(directory):
        raise DdjaxError(f"no teacher artifact in {directory} (expected {ENCODER} and {META}); "
                         "run `ddjax teacher` with the same --workdir first, or set "
                         "represent.teacher to a teacher directory")
    return json.loads((directory / META).read_text())


def write_artifact(directory: str | Path, variables: dict, meta: dict) -> dict:
    """Write ``encoder`` and ``encoder.json`` (with ``sha256`` added); returns the final meta."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, sha256=encoder_digest(variables))
    tmp_encoder, tmp_meta = directory / (ENCODER + ".tmp"), directory / (META + ".tmp")
    if tmp_encoder.exists():  # left by an interrupted write of this stage
        shutil.rmtree(tmp_encoder)
    save_pytree(tmp_encoder, variables)
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp_meta.replace(directory / META)
    tmp_encoder.rename(directory / ENCODER)
    return meta


def load_teacher(directory: str | Path):
    """``(model, variables, meta)`` of a complete artifact, its digest checked."""
    directory = Path(directory)
    meta = read_meta(directory)
    variables = load_pytree(directory / ENCODER)
    variables = jax.tree_util.tree_map(np.asarray, _plain_dicts(variables))
    found = encoder_digest(variables)
    if found != meta.get("sha256"):
        raise DdjaxError(f"teacher {directory / ENCODER} has digest {found[:12]}... but {META} "
                         f"records {str(meta.get('sha256'))[:12]}...; the artifact was modified, "
                         "rerun `ddjax teacher`")
    return build_encoder(meta), variables, meta


def _plain_dicts(tree):
    if hasattr(tree, "items"):
        return {k: _plain_dicts(v) for k, v in tree.items()}
    return tree


@functools.lru_cache(maxsize=16)
def _eval_apply(model):
    # Forward only: XLA's own convolution is the fastest on every backend here (im2col only pays
    # off for the second-order gradients of distillation), and it computes the same function.
    if "conv_impl" in {f.name for f in dataclasses.fields(model)}:
        model = model.clone(conv_impl="lax")
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def encode_images(model, variables, images_NHWC, mean, std, batch_size: int = 500,
                  desc: str | None = None) -> np.ndarray:
    """Eval-mode features (float32 [N, D]) of uint8 images, normalised ``(x/255 - mean)/std``.

    No augmentation; BatchNorm uses its running statistics; convolutions run as ``lax.conv``
    whatever the model's ``conv_impl`` (forward only, where it is fastest). The images are
    visited in the given order in batches of ``batch_size`` (the last one padded, so one
    compilation serves all). ``desc`` shows a progress bar.
    """
    if batch_size < 1:
        raise DdjaxError(f"batch size must be >= 1, got {batch_size}")
    apply = _eval_apply(model)
    n = images_NHWC.shape[0]
    size = min(batch_size, n)
    starts = range(0, n, size)
    outputs = []
    for start in (progress(starts, desc=desc) if desc else starts):
        chunk = normalize(np.asarray(images_NHWC[start:start + size]), mean, std)
        valid = chunk.shape[0]
        if valid < size:
            chunk = np.concatenate([chunk, np.zeros((size - valid, *chunk.shape[1:]), chunk.dtype)])
        out = np.asarray(apply(variables, chunk), np.float32)
        outputs.append(out.reshape(out.shape[0], -1)[:valid])
    return np.concatenate(outputs)
