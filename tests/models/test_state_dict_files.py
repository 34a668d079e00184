"""State-dict files: .npz and .safetensors read without PyTorch, which only .pt/.pth/.bin need."""

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from ddjax.errors import DdjaxError
from ddjax.models.state_dict_files import read_state_dict

STATE = {
    "conv.weight": np.arange(24, dtype=np.float16).reshape(2, 3, 2, 2),
    "bn.num_batches_tracked": np.array(7, np.int64),
}


@pytest.fixture
def no_torch(monkeypatch):
    """``import torch`` fails (ImportError), as when PyTorch is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def _check(state):
    assert state.keys() == STATE.keys()
    assert state["conv.weight"].dtype == np.float32  # float16 widened
    np.testing.assert_array_equal(state["conv.weight"], STATE["conv.weight"].astype(np.float32))
    assert state["bn.num_batches_tracked"].dtype == np.int64


def test_npz_and_safetensors_without_torch(no_torch, tmp_path):
    np.savez(tmp_path / "w.npz", **STATE)
    save_file(STATE, str(tmp_path / "w.safetensors"))
    _check(read_state_dict(tmp_path / "w.npz"))
    _check(read_state_dict(tmp_path / "w.safetensors"))


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.pth.tar", "w.bin"])
def test_torch_files_without_torch_name_the_extra(no_torch, tmp_path, name):
    (tmp_path / name).write_bytes(b"not read")
    with pytest.raises(DdjaxError) as info:
        read_state_dict(tmp_path / name)
    message = str(info.value)
    assert "\n" not in message and name in message and "pip install 'ddjax[torch]'" in message


def test_wrappers_are_unwrapped_and_other_types_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in STATE.items()}, "epoch": 3},
               tmp_path / "w.pth.tar")
    _check(read_state_dict(tmp_path / "w.pth.tar"))
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(DdjaxError, match="unsupported weights file type '.ckpt'"):
        read_state_dict(tmp_path / "w.ckpt")


def test_no_module_of_ddjax_imports_torch():
    """Every ddjax module imports with ``import torch`` failing (PyTorch is an optional extra).
    Modules that fail to import for other reasons are left to their own tests."""
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['torch'] = None\n"
        "import ddjax\n"
        "for m in pkgutil.walk_packages(ddjax.__path__, 'ddjax.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError as err:\n"
        "        if err.name == 'torch' or 'torch' in str(err).split():\n"
        "            print(m.name, err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "", f"modules that need torch to import: {result.stdout}"
