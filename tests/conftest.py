"""Shared fixtures: the real CIFAR-10 archive (prepared once per session, its tests on one worker)
and tiny synthetic image-folder archives written on the fly.

Compiled programs are shared by the whole session, subprocesses included: JAX's persistent
compilation cache in a fresh temporary folder (many tests compile the same stage programs again,
e.g. a resumed stage, and this halves the suite's time on 2 cores). Set
JAX_COMPILATION_CACHE_DIR to use your own; the workers of ``-n`` inherit the controller's. The suite
compiles far more than it runs, so XLA's CPU backend compiles at optimisation level 0 (about 30%
less time; the tests' comparisons are unchanged), unless XLA_FLAGS already sets a level."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _share_compiled_programs() -> None:
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="ddjax-tests-jax-cache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_backend_optimization_level=0").strip()
    import jax  # already imported by a plugin, it no longer reads the environment

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


_share_compiled_programs()

CIFAR10_FIXTURES = {"cifar10_archive", "cifar10_data_dir"}


def pytest_collection_modifyitems(items) -> None:
    """The suite runs in 2 worker processes (pytest-xdist, ``-n 2 --dist loadgroup`` in
    setup.cfg): the tests on the real CIFAR-10 data go to one of them, which prepares it once."""
    for item in items:
        if CIFAR10_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("cifar10"))


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    """The CIFAR-10 JPEG archive: `$DDJAX_CIFAR10_ARCHIVE` or `<repo>/../shared/data`.

    Missing: a failure when `$CI` is set (CI must exercise real data), a skip otherwise.
    """
    default = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    path = Path(os.environ.get("DDJAX_CIFAR10_ARCHIVE", default))
    if not path.exists():
        message = f"CIFAR-10 archive not found at {path}; set DDJAX_CIFAR10_ARCHIVE"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def cifar10_data_dir(cifar10_archive, tmp_path_factory) -> Path:
    """A data dir holding CIFAR-10 prepared from the archive, shared by the whole session."""
    from ddjax.data import get_spec, prepare_archive

    data_dir = tmp_path_factory.mktemp("cifar10_tfds")
    prepare_archive(
        "cifar10", cifar10_archive, class_names=get_spec("cifar10").class_names, data_dir=data_dir
    )
    return data_dir


@dataclasses.dataclass
class SyntheticArchive:
    """A small image-folder archive written by `make_archive`.

    `images[split]` and `labels[split]` hold what was written, in the order a correct reader
    must return it (classes in sorted order, files by name); `root` is the archive folder to
    hand to ddjax and `folder` the one holding `train/` and `test/` (`root/<name>` when wrapped).
    """

    root: Path
    folder: Path
    class_names: tuple[str, ...]
    images: dict[str, list[np.ndarray]]
    labels: dict[str, list[int]]

    def tar_gz(self, path: Path, *, reverse: bool = False) -> Path:
        """Pack `root` into a .tar.gz at `path`; `reverse` stores the files in reverse order."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        if reverse:
            files.reverse()
        with tarfile.open(path, "w:gz") as tar:
            for file in files:
                tar.add(file, arcname=file.relative_to(self.root).as_posix())
        return path


@pytest.fixture
def make_archive(tmp_path):
    """Factory writing a synthetic image-folder archive under tmp_path.

    make_archive(name="toy", classes=("cat", "dog", "emu"), counts={"train": 3, "test": 2},
                 sizes=[(H, W), ...] cycled over images, fmt="PNG", wrapper=True, seed=0)
    """

    def make(
        name: str = "toy",
        classes: tuple[str, ...] = ("dog", "cat", "emu"),
        counts: dict[str, int] | None = None,
        sizes: list[tuple[int, int]] | None = None,
        fmt: str = "PNG",
        wrapper: bool = True,
        seed: int = 0,
    ) -> SyntheticArchive:
        counts = counts or {"train": 3, "test": 2}
        sizes = sizes or [(6, 5)]
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        folder = root / name if wrapper else root
        suffix = ".png" if fmt == "PNG" else ".jpg"
        images: dict[str, list[np.ndarray]] = {}
        labels: dict[str, list[int]] = {}
        k = 0
        for split, count in counts.items():
            images[split], labels[split] = [], []
            for label, cls in enumerate(sorted(classes)):
                (folder / split / cls).mkdir(parents=True)
                for i in range(count):
                    height, width = sizes[k % len(sizes)]
                    k += 1
                    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                    file = folder / split / cls / f"{i:03d}{suffix}"
                    Image.fromarray(pixels).save(file, format=fmt)
                    if fmt != "PNG":  # lossy: what a correct decoder returns
                        pixels = np.asarray(Image.open(file).convert("RGB"))
                    images[split].append(pixels)
                    labels[split].append(label)
        return SyntheticArchive(root, folder, tuple(sorted(classes)), images, labels)

    return make


@dataclasses.dataclass
class ToyPipeline:
    """A tiny pipeline for stage tests: a 3-class 8x8 archive, config overrides for it (a depth-1
    width-4 student), stand-in teacher representations, and the CLI run in-process."""

    overrides: list[str]
    train_images: int
    capsys: object

    def write_reps(self, workdir: Path, rows: int | None = None, dim: int = 5,
                   dataset: str = "toy") -> np.ndarray:
        """Stand-in teacher representations, written as `ddjax represent` writes them."""
        from ddjax.artifacts.representations import REPRESENTATIONS, write_representations

        reps = np.random.default_rng(1).normal(size=(rows or self.train_images, dim)).astype(np.float32)
        write_representations(REPRESENTATIONS.locate(workdir), reps, {
            "teacher_sha256": "stand-in", "dataset": dataset, "split": "train", "train_subset": 0,
            "n": len(reps), "d": dim})
        return reps

    def cli(self, command: list[str], workdir: Path, extra: list[str] = ()):
        """Run `ddjax COMMAND --config experiments/smoke.py --workdir W --set ...`; returns
        (exit code, stdout, stderr)."""
        from ddjax.cli import main

        args = command + ["--config", str(REPO / "experiments" / "smoke.py"), "--workdir", str(workdir)]
        for item in [*self.overrides, *extra]:
            args += ["--set", item]
        code = main(args)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def summary(self, out: str) -> dict:
        import json

        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def toy_pipeline(make_archive, tmp_path, capsys) -> ToyPipeline:
    archive = make_archive(name="toy", counts={"train": 12, "test": 2}, sizes=[(8, 8)])
    overrides = [
        "data.name=toy", f"data.archive={archive.root}", f"data.data_dir={tmp_path / 'tfds'}",
        "data.train_subset=0", "model.name=convnet_d1", "model.width=4", "experts.batch_size=8", "experts.num_experts=3",
        "experts.epochs=3", "experts.experts_per_program=2", "select.percents=(10, 50)",
        "distill.batch_syn=4", "distill.syn_steps=2", "distill.percent=50",
        "distill.iterations=4", "distill.checkpoint_every=1", "distill.save_every=2",
    ]
    return ToyPipeline(overrides, 3 * 12, capsys)
