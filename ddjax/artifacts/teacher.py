"""The teacher artifact (``<workdir>/teacher/encoder``): an encoder's variables ``{'params',
'batch_stats'?}`` and a meta saying how to rebuild the network (registry name, keyword arguments,
init scheme, image size), where the weights came from, its k-NN accuracy, feature size and
``sha256``, a digest of the arrays that later stages record as the teacher they used. Written by
``ddjax teacher``; read by ``ddjax represent`` and the LGM backbone ``ddjax:<workdir>/teacher``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np

from ddjax.artifacts.base import MARKER, Artifact
from ddjax.errors import DdjaxError
from ddjax.models import build_model
from ddjax.models.registry import dummy_input

TEACHER = Artifact("teacher", "teacher/encoder", "ddjax teacher", identity=("sha256",))


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


def artifact_dir(directory: str | Path) -> Path:
    """The artifact itself, given it or the teacher stage's directory (``<workdir>/teacher``)."""
    directory = Path(directory).absolute()
    if (directory / MARKER).exists() or directory.name == "encoder":
        return directory
    return directory / "encoder"


def is_complete(directory: str | Path) -> bool:
    return TEACHER.is_complete(artifact_dir(directory))


def read_meta(directory: str | Path) -> dict:
    """The artifact's meta; one line saying what to run when there is no complete artifact."""
    return TEACHER.read_meta(artifact_dir(directory))


def write_artifact(directory: str | Path, variables: dict, meta: dict) -> dict:
    """Write the teacher artifact into the teacher stage's ``directory`` (``sha256`` added)."""
    meta = dict(meta, sha256=encoder_digest(variables))
    return TEACHER.write(Path(directory) / "encoder", meta, variables)


def load_teacher(directory: str | Path):
    """``(model, variables, meta)`` of a complete artifact, its digest checked."""
    variables, meta = TEACHER.read(artifact_dir(directory))
    variables = jax.tree_util.tree_map(np.asarray, _plain_dicts(variables))
    found = encoder_digest(variables)
    if found != meta.get("sha256"):
        raise DdjaxError(f"teacher {artifact_dir(directory)} has digest {found[:12]}... but its meta "
                         f"records {str(meta.get('sha256'))[:12]}...; the artifact was modified, "
                         "rerun `ddjax teacher` in another --workdir")
    return build_encoder(meta), variables, meta


def _plain_dicts(tree):
    if hasattr(tree, "items"):
        return {k: _plain_dicts(v) for k, v in tree.items()}
    return tree
