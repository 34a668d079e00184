"""The only module that talks to Orbax: run-state checkpoints and single-pytree artifacts.

Run state is a pytree of arrays (parameters, optimiser states, JAX keys) plus a JSON-compatible
``meta`` dict (step counters, data position, a numpy generator's state). Saves are atomic (Orbax
writes into a temporary directory and renames it once complete), the newest ``max_to_keep`` (at
least two) are retained, and ``restore_latest`` gives back exactly what was saved, so a resumed run
continues where an uninterrupted one would have been. A checkpoint that cannot be read (a
truncated file, missing metadata) is reported in one line, moved aside, and the previous one used.

Typed JAX keys (``jax.random.key``) are stored as their raw key data and rebuilt on restore from
the template's key type; legacy ``uint32[2]`` keys are plain arrays and need nothing special.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from ddjax.errors import DdjaxError


def _is_typed_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _data_to_keys(tree: Any, template: Any) -> Any:
    """Typed keys rebuilt from their data; arrays placed as the template's are. Orbax commits what
    it restores to a device, while fresh arrays are not committed, and a jitted step fed both
    kinds is compiled once for each."""
    def rebuild(restored, like):
        if isinstance(like, jax.Array) and not like.committed:
            restored = jax.numpy.asarray(np.asarray(restored))
        if _is_typed_key(like):
            return jax.random.wrap_key_data(restored, impl=jax.random.key_impl(like))
        return restored

    return jax.tree.map(rebuild, tree, template)


def _restore_target(template: Any) -> Any:
    """Shape/dtype structs Orbax restores into, with typed keys replaced by their data's shape."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        if not isinstance(x, jax.Array) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        _keys_to_data(template),
    )


def numpy_rng_state(rng: np.random.Generator) -> dict:
    """A JSON-compatible snapshot of a numpy generator, for ``meta``."""
    return rng.bit_generator.state


def numpy_rng_from_state(state: dict) -> np.random.Generator:
    """Rebuild a numpy generator from ``numpy_rng_state``'s snapshot."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


class RunCheckpointer:
    """Atomic, retained, exactly resumable checkpoints of one run's state in ``directory``."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        if max_to_keep < 2:
            raise ValueError("keep at least two checkpoints, so an unreadable newest one has a fallback")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none yet."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Save ``state`` (pytree of arrays) and ``meta`` (JSON-compatible) as ``step``; blocks until
        the checkpoint is complete on disk, so a kill right after leaves a whole checkpoint."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_keys_to_data(state)),
            meta=ocp.args.JsonSave(meta or {}),
        )
        self._manager.save(int(step), args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into ``template``'s structure."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise DdjaxError(f"no checkpoint in {self.directory}; nothing to resume from")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_restore_target(template)),
            meta=ocp.args.JsonRestore(),
        )
        restored = self._manager.restore(int(step), args=args)
        return _data_to_keys(restored["state"], template), dict(restored["meta"])

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """``(state, meta)`` of the newest checkpoint that can be restored, None when there is
        none. An unreadable one is moved to ``<directory>.unreadable/`` (kept for inspection) with a
        one-line notice on stderr, and the next older one is tried."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(template, step)
            except Exception as err:  # whatever Orbax raises for a damaged checkpoint
                self._set_aside(step, err)
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        aside = self.directory.with_name(self.directory.name + ".unreadable") / f"{step}-{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(aside))
        self._manager.reload()
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        older = self.latest_step()
        then = f"resuming from checkpoint {older}" if older is not None else "starting from the beginning"
        print(f"ddjax: checkpoint {step} in {self.directory} cannot be restored ({type(err).__name__}: "
              f"{reason}); it was moved to {aside}; {then}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "RunCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _this_process_only() -> ocp.StandardCheckpointer:
    """A checkpointer that neither waits for nor writes with other processes: artifacts are
    written by one process and read by each on its own (ddjax.artifacts)."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def save_pytree(path: str | Path, tree: Any) -> Path:
    """Save one pytree artifact (e.g. representations, a distilled set) atomically at ``path``.

    Refuses to overwrite: an existing artifact is never replaced behind the user's back.
    """
    path = Path(path).absolute()
    if path.exists():
        raise DdjaxError(f"{path} already exists; remove it or choose another output path")
    with _this_process_only() as checkpointer:
        checkpointer.save(path, _keys_to_data(tree))
        checkpointer.wait_until_finished()
    return path


def load_pytree(path: str | Path, template: Any | None = None) -> Any:
    """Load a ``save_pytree`` artifact, into ``template``'s structure and dtypes when given."""
    path = Path(path).absolute()
    if not path.exists():
        raise DdjaxError(f"artifact {path} does not exist; run the stage that writes it first")
    with _this_process_only() as checkpointer:
        if template is None:
            return checkpointer.restore(path)
        return _data_to_keys(checkpointer.restore(path, _restore_target(template)), template)
