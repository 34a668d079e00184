"""Reference PyTorch models for the ViT parity tests (timm, open_clip), with small random weights.

The reference libraries come with the ``test`` extra; missing, they fail the tests under ``$CI``
and skip them otherwise. PyPI's torchvision wheel (imported by timm and open_clip) is built for
CUDA torch: with the CPU torch wheel it stops at registering two C++ operators these tests never
call, so their schemas are declared first and torchvision imports without its C++ extension.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings

import numpy as np
import pytest


def _import_torchvision(torch):
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_torchvision.library = lib  # keep the definitions alive
    return importlib.import_module("torchvision")


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="session")
def ref():
    """Namespace: torch, timm, open_clip and helpers (randomize, nchw, rel_err, save)."""
    try:
        import torch

        warnings.filterwarnings("ignore", message=".*torchvision.*")
        _import_torchvision(torch)
        import open_clip
        import timm
    except ImportError as err:
        message = f"reference libraries missing ({err}); pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    torch.set_grad_enabled(False)

    def randomize(model, seed=0, scale=0.3):
        """Every parameter and buffer random (norm scales around 1), so no weight is a no-op."""
        gen = torch.Generator().manual_seed(seed)
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen) * scale
            if name.endswith(
                (
                    "norm1.weight",
                    "norm2.weight",
                    "norm.weight",
                    "ln_1.weight",
                    "ln_2.weight",
                    "ln_pre.weight",
                    "ln_post.weight",
                )
            ):
                noise = noise + 1.0
            tensor.copy_(noise)
        return model.eval()

    def nchw(x_NHWC):
        return torch.from_numpy(np.ascontiguousarray(np.transpose(x_NHWC, (0, 3, 1, 2))))

    def save(state_dict, path):
        """Write a state dict as .pth (torch.save), .safetensors or .npz, by suffix."""
        state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
        path = str(path)
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state_dict, path)
        elif path.endswith(".npz"):
            np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})
        else:
            torch.save(state_dict, path)
        return path

    def zeros_state_dict(model):
        """A state dict of zero-strided numpy zeros with ``model``'s names and shapes (works for a
        model on the meta device; costs no memory until the importer copies it)."""
        return {
            k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()
        }

    def moco_sincos(grid, width, temperature=10000.0):
        """MoCo v3's build_2d_sincos_position_embedding (vits.py), [1, 1 + grid*grid, width]."""
        coords = torch.arange(grid, dtype=torch.float32)
        grid_w, grid_h = torch.meshgrid(coords, coords, indexing="ij")
        omega = 1.0 / temperature ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4))
        out_w = grid_w.flatten()[:, None] * omega[None]
        out_h = grid_h.flatten()[:, None] * omega[None]
        table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
        return torch.cat([torch.zeros(1, width), table])[None]

    return types.SimpleNamespace(
        torch=torch,
        timm=timm,
        open_clip=open_clip,
        randomize=randomize,
        nchw=nchw,
        rel_err=_relative_error,
        save=save,
        zeros_state_dict=zeros_state_dict,
        moco_sincos=moco_sincos,
    )


@pytest.fixture
def images():
    def make(n, size, seed=0):
        return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)

    return make
