"""Running a stage command on a chosen device layout: this process (1 CPU device), one
subprocess with N virtual CPU devices, or P localhost processes of jax.distributed with N devices
each. The device count is fixed when JAX starts, so every other layout needs new processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_args(command: list[str], workdir: Path, overrides: list[str], config: str) -> list[str]:
    args = [*command, "--config", config, "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    return args


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu",
               DDJAX_TENSORBOARD="0")
    # The device count comes from JAX_NUM_CPU_DEVICES; the suite's other XLA flags stay.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def start(args: list[str], *, devices: int, processes: int = 1) -> list[subprocess.Popen]:
    """``python -m ddjax.cli ARGS`` as ``processes`` processes with ``devices`` devices each."""
    port = free_port()
    runs = []
    for pid in range(processes):
        flags = ([] if processes == 1 else
                 ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                  "--process-id", str(pid)])
        runs.append(subprocess.Popen([sys.executable, "-m", "ddjax.cli", *args, *flags], cwd=REPO,
                                     env=_env(devices), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    return runs


def finish(runs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    results = []
    for run in runs:
        out, err = run.communicate(timeout=timeout)
        results.append((run.returncode, out, err))
    return results


def run_layout(args: list[str], *, devices: int, processes: int = 1) -> list[tuple[int, str, str]]:
    results = finish(start(args, devices=devices, processes=processes))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    return results


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def run_python(code: str, *, devices: int) -> str:
    """The stdout of ``python -c CODE`` in one process with ``devices`` virtual CPU devices."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(devices),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
