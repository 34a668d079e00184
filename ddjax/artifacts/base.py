"""The artifact protocol: one declaration per artifact, one writer, complete or absent.

An artifact is a directory holding ``arrays/`` (one Orbax pytree, optional), ``meta.json`` (its
kind, format version, identity fields and description) and any files a person looks at (grids,
PNGs), with an empty ``COMPLETE`` marker written last. Everything is written under
``<name>.partial`` and renamed into place, so a reader that finds the marker finds a whole
artifact; a directory without the marker is what a killed writer left, and the next write
replaces it. The table of artifacts and the stage protocol are in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from ddjax import mesh
from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.errors import DdjaxError
from ddjax.runlog import write_json_atomic

MARKER, META, ARRAYS = "COMPLETE", "meta.json", "arrays"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Where one kind of artifact lives, who writes it and which fields identify it.

    ``path`` is relative to the workdir (or the root the caller passes) and may name fields,
    e.g. ``distill/synsets/iter_{iteration:06d}``; ``identity`` lists the meta fields that a
    reader (or a rerun of the producer) must find equal to its own.
    """

    name: str
    path: str
    producer: str
    identity: tuple[str, ...] = ()
    hint: str = "with the same --config and --workdir"  # how to run the producer
    remedy: str = ("it is not overwritten: use another --workdir, or the settings it was made "
                   "with")  # what to do about an identity mismatch

    def locate(self, root: str | Path, **fields: Any) -> Path:
        return Path(root).absolute() / self.path.format(**fields)

    @staticmethod
    def is_complete(directory: str | Path) -> bool:
        return (Path(directory) / MARKER).exists()

    def write(self, directory: str | Path, meta: dict, arrays: Any = None,
              extra: Callable[[Path], None] | None = None) -> dict:
        """Write the artifact at ``directory``; ``extra(tmp_dir)`` adds files for people.

        Refuses to replace a complete artifact; a partial one (a killed write) is replaced.
        Returns the meta as written. Every process of a run calls it; the first one writes.
        """
        directory = Path(directory)
        arrays = None if arrays is None else mesh.fetch(arrays)  # sharded leaves: gathered by all
        if mesh.is_primary():
            meta = self._write(directory, meta, arrays, extra)
        mesh.barrier(f"artifact {directory}")
        return dict(meta, artifact=self.name, format=FORMAT)

    def _write(self, directory: Path, meta: dict, arrays: Any,
               extra: Callable[[Path], None] | None) -> dict:
        if self.is_complete(directory):
            raise DdjaxError(f"{directory} already holds a complete {self.name}; it is not "
                             "replaced: remove it or use another --workdir")
        tmp = directory.with_name(directory.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if arrays is not None:
            save_pytree(tmp / ARRAYS, arrays)
        if extra is not None:
            extra(tmp)
        meta = finish(tmp, self, meta)
        if directory.exists():  # a partial artifact of an older layout or a killed rename
            shutil.rmtree(directory)
        tmp.rename(directory)
        return meta

    def read_meta(self, directory: str | Path) -> dict:
        """The meta of a complete artifact; one line naming the producer when there is none."""
        directory = Path(directory)
        if not self.is_complete(directory):
            state = "is incomplete (a run was stopped while writing it)" if directory.exists() \
                else "does not exist"
            raise DdjaxError(f"the {self.name} at {directory} {state}; run `{self.producer}` "
                             f"{self.hint} first")
        meta = json.loads((directory / META).read_text())
        if meta.get("artifact") != self.name:
            raise DdjaxError(f"{directory} holds a {meta.get('artifact')!r}, not a {self.name}")
        return meta

    def read(self, directory: str | Path, template: Any = None) -> tuple[Any, dict]:
        """``(arrays, meta)`` of a complete artifact."""
        meta = self.read_meta(directory)
        return load_pytree(Path(directory) / ARRAYS, template), meta

    def check(self, meta: dict, expected: dict, where: str | Path) -> None:
        """Raise unless every identity field in ``expected`` equals the artifact's."""
        wrong = [f"{k}: {_short(meta.get(k))} there, {_short(expected[k])} here"
                 for k in self.identity if k in expected and meta.get(k) != expected[k]]
        if wrong:
            raise DdjaxError(f"the {self.name} at {where} was made differently ({'; '.join(wrong)}); "
                             f"{self.remedy}")

    def complete_under(self, parent: str | Path, pattern: str = "*") -> list[Path]:
        """Complete artifacts among ``parent``'s children matching ``pattern``, sorted by name."""
        parent = Path(parent)
        if not parent.is_dir():
            return []
        return sorted(p for p in parent.glob(pattern) if self.is_complete(p))


def finish(directory: Path, artifact: Artifact, meta: dict) -> dict:
    """Write ``meta.json`` and then the marker into ``directory``; for artifacts whose arrays are
    written piece by piece (an expert's epochs) before they are declared complete."""
    meta = dict(meta, artifact=artifact.name, format=FORMAT)
    write_json_atomic(directory / META, meta, sort_keys=True)
    (directory / MARKER).touch()
    return meta


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
