"""Reading a teacher's PyTorch state dict from disk (``.npz``, ``.safetensors``, ``.pt``/``.pth``).

KRR-ST ships its Barlow Twins ResNet-18 teachers as PyTorch files; other code bases wrap the
encoder's names in a prefix ('module.' from DataParallel, 'backbone.') or save heads beside it
('fc.*', 'projector.*'). :func:`encoder_state_dict` strips one configured prefix and drops only the
names the user listed; everything else must match the network exactly (checked by
``ddjax.models.from_torch_state_dict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ddjax.errors import DdjaxError

SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")
_WRAPPER_KEYS = ("state_dict", "model", "encoder", "backbone")


def _from_torch_file(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise DdjaxError(f"reading {path} needs PyTorch: pip install torch, or convert it to .npz "
                         "or .safetensors (a mapping of state-dict names to arrays)") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):  # {'state_dict': {...}, 'epoch': ...} and similar wrappers
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if wrapped and not any(hasattr(v, "shape") for v in obj.values()):
            obj = obj[wrapped[0]]
    if not isinstance(obj, dict):
        raise DdjaxError(f"{path} holds a {type(obj).__name__}, not a state dict (name -> tensor)")

    def to_numpy(value):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.float()
            return value.numpy()
        return np.asarray(value)

    return {str(k): to_numpy(v) for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A state dict (name -> numpy array) from ``.npz``, ``.safetensors`` or ``.pt``/``.pth``."""
    path = Path(path)
    if not path.is_file():
        raise DdjaxError(f"teacher.import_path {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise DdjaxError(f"reading {path} needs the safetensors package: pip install "
                             "safetensors, or convert it to .npz") from None
        return dict(load_file(str(path)))
    if suffix in (".pt", ".pth"):
        return _from_torch_file(path)
    raise DdjaxError(f"teacher.import_path {path}: unsupported file type {suffix!r}; "
                     f"use one of {', '.join(SUFFIXES)}")


def encoder_state_dict(state_dict: dict, prefix: str = "", ignore: Iterable[str] = ()) -> dict:
    """Strip ``prefix`` from the names that carry it, then drop names starting with ``ignore``."""
    ignore = tuple(ignore)
    out = {}
    for name, value in state_dict.items():
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        if ignore and name.startswith(ignore):
            continue
        out[name] = value
    return out
