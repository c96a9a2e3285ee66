"""Files written whole or not at all: written under a hidden temporary name beside the target,
flushed to the disk, then renamed over it; on any failure (a full disk, a signal) the temporary
file is removed, so a reader finds the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """Return where `path` is written before it is renamed into place: hidden, in the same folder
    (a rename is atomic only within one filesystem), one per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield the temporary path to write `path`'s new content to; when the block ends, the file is
    synced and renamed over `path` (and the folder synced, so the rename survives a crash); when
    the block or the rename fails, the temporary file is removed and the error raised again."""
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` as the whole of `path` (its folder created if missing), or leave `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_bytes(data)
