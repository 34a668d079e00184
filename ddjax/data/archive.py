"""Local image-folder archives: find them, check their layout, and read their images.

An archive (a folder, ``.tar`` or ``.tar.gz``) holds ``train/{class}/...`` and ``test/{class}/...``
images (jpg, jpeg, png; sub-folders allowed), possibly inside one top-level folder; hidden files,
``__MACOSX`` and loose files are ignored. Files are ordered as torchvision's ``ImageFolder`` does.
Archives are looked for at an explicit path, then in ``$DDJAX_ARCHIVE_DIR``, then in the shared
data folder (``<repo>/../shared/data``), as ``NAME.tar.gz``, ``NAME-*.tar.gz``, ... or ``NAME/``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from PIL import Image

from ddjax.data.registry import SPLITS
from ddjax.errors import DdjaxError

ARCHIVE_DIR_ENV = "DDJAX_ARCHIVE_DIR"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_IGNORED_DIRS = ("__MACOSX",)


def default_archive_dir() -> Path:
    """`<repo>/../shared/data`, where `<repo>` is the folder that holds the `ddjax` package."""
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"


def archive_search_dirs() -> list[tuple[str, Path]]:
    """The (description, folder) pairs searched for archives when no path is given."""
    dirs = []
    if os.environ.get(ARCHIVE_DIR_ENV):
        dirs.append((f"${ARCHIVE_DIR_ENV}", Path(os.environ[ARCHIVE_DIR_ENV]).expanduser()))
    dirs.append(("default", default_archive_dir()))
    return dirs


def describe_search(name: str) -> str:
    """Where `find_archive(name)` looks, in words, for error messages."""
    places = ", ".join(f"{what} {path}" for what, path in archive_search_dirs())
    unset = "" if os.environ.get(ARCHIVE_DIR_ENV) else f" (${ARCHIVE_DIR_ENV} is unset)"
    return f"{name}.tar.gz / {name}.tar / {name}-*.tar.gz / folder {name} in {places}{unset}"


def find_archive(name: str, archive: str | os.PathLike | None = None) -> Path | None:
    """The archive for dataset `name`, or None when none is found (only without `archive`).

    An explicit `archive` must exist: a `.tar`/`.tar.gz` file, an image folder (with `train/`
    and `test/`, possibly inside one wrapper folder), or a folder holding an archive for `name`.
    """
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.exists():
            raise DdjaxError(f"archive {path} does not exist; check the --archive path")
        if path.is_file():
            if not path.name.endswith(_TAR_SUFFIXES):
                raise DdjaxError(f"archive {path} is not a .tar, .tar.gz or .tgz file or a folder")
            return path
        if _is_image_folder(path):
            return path
        match = _match_in_dir(name, path)
        if match is None:
            raise DdjaxError(
                f"{path} has no train/ and test/ folders and no archive named {name} in it; "
                "point --archive at the image folder or the archive file"
            )
        return match
    for _, folder in archive_search_dirs():
        if folder.is_dir():
            match = _match_in_dir(name, folder)
            if match is not None:
                return match
    return None


def _match_in_dir(name: str, folder: Path) -> Path | None:
    for suffix in _TAR_SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    tagged = sorted(
        path for path in folder.iterdir() if path.is_file() and _is_tagged(name, path.name)
    )
    if len(tagged) > 1:
        names = ", ".join(path.name for path in tagged)
        raise DdjaxError(
            f"several archives for {name} in {folder} ({names}); pick one with --archive"
        )
    if tagged:
        return tagged[0]
    if (folder / name).is_dir():
        return folder / name
    return None


def _is_tagged(name: str, filename: str) -> bool:
    """Whether `filename` is `NAME-<tag>.tar.gz` (or `.tgz`, `.tar`)."""
    for suffix in _TAR_SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return stem.startswith(f"{name}-") and len(stem) > len(name) + 1
    return False


def _is_image_folder(path: Path) -> bool:
    """Whether `path` has `train/` and `test/`, directly or inside single wrapper folders
    (checked from directory listings only, so a large folder of archives is cheap to test)."""
    while not all((path / split).is_dir() for split in SPLITS):
        entries = [entry for entry in path.iterdir() if not _ignored([entry.name])]
        if len(entries) != 1 or not entries[0].is_dir():
            return False
        path = entries[0]
    return True


# ---------------------------------------------------------------------------------------------
# Listing and reading: a folder or a tar file, as relative POSIX paths of regular files.


def _ignored(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_DIRS for p in parts)


def _list_folder(root: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).parts
        if _ignored(rel):
            dirnames.clear()
            continue
        files += ["/".join((*rel, f)) for f in filenames if not f.startswith(".")]
    return files


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError) as e:
        raise DdjaxError(f"cannot read archive {path}: {e}") from None


def _tar_members(source: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(relative path, tar, member) for the regular, non-hidden files of a tar, in stored order."""
    with _open_tar(source) as tar:
        try:
            for member in tar:
                if member.isfile():
                    parts = [p for p in member.name.split("/") if p not in ("", ".")]
                    if parts and not _ignored(parts):
                        yield "/".join(parts), tar, member
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DdjaxError(f"cannot read archive {source}: {e}") from None


def _header_size(data: bytes, where: str) -> tuple[int, int]:
    """(H, W) from an image file's header, without decoding the pixels."""
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except (OSError, SyntaxError, ValueError) as e:
        raise DdjaxError(f"unreadable image {where}: {e}; replace or remove it") from None
    return height, width


def list_files(source: Path) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Relative POSIX paths of all regular, non-hidden files in a folder or tar archive, and
    the (H, W) of the images whose headers were read on the way: a tar is read in full to list
    it, so its image headers come almost free; a folder is listed without opening files."""
    if source.is_dir():
        return _list_folder(source), {}
    names, sizes = [], {}
    for name, tar, member in _tar_members(source):
        names.append(name)
        if name.lower().endswith(IMAGE_SUFFIXES):
            try:
                sizes[name] = _header_size(tar.extractfile(member).read(), name)
            except DdjaxError:
                pass  # reported if the layout uses this file (see common_image_size)
    return names, sizes


def iter_file_bytes(source: Path, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """(path, contents) for each wanted file: in the given order for a folder, in stored order
    for a tar (a compressed tar can only be read front to back)."""
    if source.is_dir():
        for name in wanted:
            yield name, (source / name).read_bytes()
        return
    wanted = set(wanted)
    for name, tar, member in _tar_members(source):
        if name in wanted:
            yield name, tar.extractfile(member).read()


# ---------------------------------------------------------------------------------------------
# Layout: which files are which split and class, in stored order.


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checked image-folder archive.

    Attributes:
      source: the folder or tar file.
      class_names: label order (label i is class_names[i]).
      files: split -> ((path inside the archive, label), ...) in stored order: by label, then
        in `ImageFolder` file order within a class.
      header_sizes: (H, W) of the images whose headers were read while listing.
    """

    source: Path
    class_names: tuple[str, ...]
    files: Mapping[str, tuple[tuple[str, int], ...]]
    header_sizes: Mapping[str, tuple[int, int]]


def _strip_wrapper(parts: list[tuple[str, ...]]) -> tuple[str, list[tuple[str, ...]]] | None:
    """(prefix, paths below it) once `train/` and `test/` are at the top, or None."""
    prefix: tuple[str, ...] = ()
    while True:
        dirs = {p[0] for p in parts if len(p) > 1}
        if set(SPLITS) <= dirs:
            return "/".join(prefix), parts
        tops = {p[0] for p in parts}
        if len(tops) != 1 or len(dirs) != 1:
            return None
        prefix += (parts[0][0],)
        parts = [p[1:] for p in parts]


def _file_key(rel: tuple[str, ...]) -> tuple[str, str]:
    # torchvision's ImageFolder walks folders in sorted order and sorts names within each.
    return "/".join(rel[:-1]), rel[-1]


def read_layout(
    source: Path, class_names: Sequence[str] | None = None, num_classes: int | None = None
) -> Layout:
    """List and check `source`; `class_names` (if given) fixes the label order and must equal
    the set of class folders; otherwise the folders are taken in sorted order, and there must
    be `num_classes` of them if that is given."""
    names, header_sizes = list_files(source)
    stripped = _strip_wrapper([tuple(name.split("/")) for name in names])
    if stripped is None:
        raise DdjaxError(
            f"bad layout in {source}: expected train/ and test/ folders of class folders "
            "(optionally inside one top-level folder)"
        )
    prefix, parts = stripped
    by_split: dict[str, dict[str, list[tuple[str, ...]]]] = {}
    for split in SPLITS:
        classes: dict[str, list[tuple[str, ...]]] = {}
        for p in parts:
            if p[0] != split:
                continue
            if len(p) == 2:
                raise DdjaxError(
                    f"bad layout in {source}: file {split}/{p[1]} is outside a class folder; "
                    f"put every image in {split}/<class>/"
                )
            images = classes.setdefault(p[1], [])
            if p[-1].lower().endswith(IMAGE_SUFFIXES):
                images.append(p[2:])
        for name, images in classes.items():
            if not images:
                raise DdjaxError(
                    f"empty class folder {split}/{name} in {source}: it has no "
                    f"{'/'.join(IMAGE_SUFFIXES)} images; add images or remove the folder"
                )
        by_split[split] = classes
    names = _class_order(source, by_split, class_names)
    if num_classes is not None and len(names) != num_classes:
        raise DdjaxError(
            f"bad layout in {source}: {len(names)} class folders, expected {num_classes}"
        )
    root = f"{prefix}/" if prefix else ""
    files = {
        split: tuple(
            (f"{root}{split}/{name}/{'/'.join(rel)}", label)
            for label, name in enumerate(names)
            for rel in sorted(by_split[split][name], key=_file_key)
        )
        for split in SPLITS
    }
    return Layout(source=source, class_names=names, files=files, header_sizes=header_sizes)


def _class_order(
    source: Path,
    by_split: Mapping[str, Mapping[str, list]],
    class_names: Sequence[str] | None,
) -> tuple[str, ...]:
    train, test = (set(by_split[s]) for s in SPLITS)
    if train != test:
        diff = ", ".join(sorted(train ^ test)[:5])
        raise DdjaxError(
            f"bad layout in {source}: train/ and test/ have different class folders ({diff})"
        )
    if class_names is None:
        return tuple(sorted(train))
    if set(class_names) != train or len(class_names) != len(train):
        missing = ", ".join(sorted(set(class_names) - train)[:5]) or "none"
        extra = ", ".join(sorted(train - set(class_names))[:5]) or "none"
        raise DdjaxError(
            f"class folders in {source} do not match the dataset's classes "
            f"(missing: {missing}; unexpected: {extra}); rename the folders"
        )
    return tuple(class_names)


# ---------------------------------------------------------------------------------------------
# Images.


def open_image(data: bytes, where: str) -> Image.Image:
    """Decode an image file fully; a DdjaxError naming `where` if it cannot be read."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DdjaxError(f"unreadable image {where}: {e}; replace or remove it") from None
    return image


def common_image_size(layout: Layout) -> tuple[int, int] | None:
    """(H, W) if every image in the archive has that size, else None.

    Uses the headers read while listing and reads the others' headers, stopping at the second
    distinct size.
    """
    wanted = [path for split in SPLITS for path, _ in layout.files[split]]
    sizes = {layout.header_sizes[p] for p in wanted if p in layout.header_sizes}
    missing = [p for p in wanted if p not in layout.header_sizes]
    if missing and len(sizes) <= 1:
        for path, data in iter_file_bytes(layout.source, missing):
            sizes.add(_header_size(data, f"{layout.source}:{path}"))
            if len(sizes) > 1:
                break
    return sizes.pop() if len(sizes) == 1 else None
