"""Read a PyTorch-style state dict (name -> array) from a local file, as numpy arrays.

``.safetensors`` and ``.npz`` are read with numpy only; ``.pt``/``.pth``/``.bin``/``.tar``
(``.pth.tar``) are PyTorch pickles or TorchScript archives (OpenAI CLIP), so they need PyTorch,
imported here on first use: it is an optional dependency (``pip install 'ddjax[torch]'``).
Shared by the ViT weight import (``ddjax.backbones``) and the teacher import.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from ddjax.errors import DdjaxError

SUFFIXES = (".safetensors", ".npz", ".pt", ".pth", ".bin", ".tar")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar")
_WRAPPERS = ("teacher", "state_dict", "model", "module", "model_ema", "encoder", "backbone")


def _to_numpy(value) -> np.ndarray:
    """A numpy array, floating point as float32 (bfloat16 and float16 weights are widened)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    value = np.asarray(value)
    widen = value.dtype.kind == "f" or value.dtype.name == "bfloat16"
    return value.astype(np.float32) if widen else value


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI CLIP's ``.pt``), a zip holding code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in archive.namelist()
        )


def _read_torch(path: Path):
    try:
        import torch
    except ImportError:
        raise DdjaxError(
            f"reading {path} needs PyTorch; install it with: pip install 'ddjax[torch]'"
        ) from None
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch.jit.load is deprecated; OpenAI's files need it
                warnings.simplefilter("ignore")
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, corrupt archive, ...
        raise DdjaxError(f"cannot read {path} with PyTorch: {str(err).splitlines()[0]}") from None


def _read_safetensors(path: Path) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for bfloat16 tensors)
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as err:
        raise DdjaxError(f"cannot read {path} as safetensors: {str(err).splitlines()[0]}") from None


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A flat state dict (name -> float32/int numpy array) from a local file; wrappers such as
    ``{'state_dict': ...}``, ``{'model': ...}``, ``{'encoder': ...}`` or DINO's ``{'teacher': ...}``
    are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise DdjaxError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj = _read_safetensors(path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            obj = {name: archive[name] for name in archive.files}
    elif suffix in TORCH_SUFFIXES:
        obj = _read_torch(path)
    else:
        raise DdjaxError(
            f"{path}: unsupported weights file type {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    while isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
        inner = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = obj[inner]
    if not isinstance(obj, dict) or not obj:
        raise DdjaxError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k): _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
