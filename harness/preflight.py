"""Checks that run before anything is written: every output path is a folder this process can
write in (or can create), and the disk has room for the cache about to be built. A failed check is
one line naming the path and what was expected (InputError, exit 2), and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from harness.errors import InputError
from harness.locking import sqlite_path

MB = 1024 * 1024


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_folder(path: Path, what: str) -> None:
    """Raise InputError unless `path` is a folder this process can write in, or can be created
    (its nearest existing ancestor is a writable folder). Probes with a folder it removes again."""
    path = Path(os.path.abspath(path))
    existing = _existing_ancestor(path)
    if not existing.is_dir():
        raise InputError(f"{what} {path}: {existing} is a file, expected a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".harness-probe-", dir=existing)).rmdir()
    except OSError as exc:
        reason = "the filesystem is read-only" if exc.errno == errno.EROFS else exc.strerror
        raise InputError(f"{what} {path}: cannot write in {existing} ({reason})") from None


def writable_file(path: Path, what: str) -> None:
    """Raise InputError unless `path` can be written as a file: not a folder, its folder writable."""
    if Path(path).is_dir():
        raise InputError(f"{what} {path}: is a folder, expected a file name")
    writable_folder(Path(path).parent, what)


def room_for(folder: Path, size: int, what: str) -> None:
    """Raise InputError unless the filesystem of `folder` has `size` bytes free."""
    free = shutil.disk_usage(_existing_ancestor(Path(os.path.abspath(folder)))).free
    if size > free:
        raise InputError(f"{what} {folder}: needs {size / MB:,.1f} MB and the filesystem has {free / MB:,.1f} MB free")


def check_outputs(*, output_dir: Path, storage_path: Path | None = None, stores: tuple[str, ...] = ()) -> None:
    """Check every folder a command writes to: the output folder (results, prepared data, the
    default stores), Tune's storage path, and the folders of SQLite stores among `stores`."""
    writable_folder(output_dir, "output_dir")
    if storage_path is not None:
        writable_folder(storage_path, "storage_path")
    for url in stores:
        database = sqlite_path(url)
        if database is not None:
            writable_folder(database.parent, "store")
