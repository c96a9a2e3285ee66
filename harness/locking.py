"""An exclusive lock on a file beside a shared resource, held across processes on one machine."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def store_lock(url: str) -> Iterator[None]:
    """Hold the lock beside a SQLite store (`<file>.lock`) for the block, while its schema is
    created or upgraded; any other store needs none (its server serialises that)."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".lock")):
        yield


def sqlite_path(url: str) -> Path | None:
    """Return the database file of a `sqlite:///` URL, None for any other store."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


# An Optuna journal storage (a log file of operations, Optuna's form for a shared filesystem):
# `journal:///abs/path.log`, the path of a file URI after the scheme.
JOURNAL_SCHEME = "journal://"


def journal_path(url: str) -> Path | None:
    """Return the log file of a `journal:///abs/path` URL, None for any other store."""
    return Path(url.removeprefix(JOURNAL_SCHEME)) if url.startswith(JOURNAL_SCHEME) else None
