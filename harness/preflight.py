"""Checks that run before anything is written: every output path is a folder this process can
write in (or can create), each SQLite store is an intact database of its kind, and the disk has room
for the cache about to be built. A failed check is one line naming the path and what was expected
(InputError, exit 2), and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError
from harness.locking import journal_path, sqlite_path

MB = 1024 * 1024
SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite database file


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


@dataclass(frozen=True)
class Store:
    """A store a command writes to: its URL, the experiment-file key that names it, what it holds
    (in words) and tables a database of its kind always has."""

    url: str
    key: str
    kind: str
    tables: frozenset[str]


def tracking_store(url: str) -> Store:
    """Return the MLflow tracking store at `url`."""
    return Store(url, "tracking_uri", "an MLflow tracking store", frozenset({"experiments", "runs"}))


def optuna_store(url: str) -> Store:
    """Return the Optuna storage at `url`."""
    return Store(url, "search.optuna_storage", "an Optuna storage", frozenset({"studies", "trials"}))


def _sqlite_problem(database: Path, tables: frozenset[str]) -> str | None:
    """Return what is wrong with the SQLite file `database`, None when it is an intact database
    holding all of `tables`, or no table at all (a store not created yet)."""
    try:
        # Read-only, and waiting on a writer's lock (a sweep beside this one) rather than failing.
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        check, found = str(exc), set()
    if check != "ok":
        return f"the database is damaged ({check}); move it aside to start a new one (what it holds cannot be resumed)"
    missing = sorted(tables - found)
    if found and missing:
        return f"it has no table {missing[0]!r}, so it is not {{kind}}: point {{key}} at another file"
    return None


def check_store(store: Store) -> None:
    """Raise InputError unless the store's SQLite file (or journal file) can be written: absent, or
    an intact database of its kind (a journal, not a database); a store behind a server is checked
    by its server."""
    journal = journal_path(store.url)
    if journal is not None:
        _check_journal(journal, store.key)
    database = sqlite_path(store.url)
    if database is None:
        return
    writable_folder(database.parent, store.key)
    if database.is_file() and database.stat().st_size > 0:
        problem = _sqlite_problem(database, store.tables)
        if problem is not None:
            raise InputError(f"{store.key} {database}: " + problem.format(kind=store.kind, key=store.key))


def _check_journal(journal: Path, key: str) -> None:
    """Raise InputError unless `journal` can be written as an Optuna journal: a file name in a
    writable folder, not a SQLite database (which a journal's reader would take for a log)."""
    writable_file(journal, key)
    if journal.is_file():
        with journal.open("rb") as handle:
            if handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                raise InputError(f"{key} {journal}: a SQLite database, not a journal; point it at sqlite:///{journal}")


def check_outputs(*, output_dir: Path, storage_path: Path | None = None, stores: tuple[Store, ...] = ()) -> None:
    """Check every folder a command writes to: the output folder (results, prepared data, the
    default stores), Tune's storage path, and each store (see check_store)."""
    writable_folder(output_dir, "output_dir")
    if storage_path is not None:
        writable_folder(storage_path, "storage_path")
    for store in stores:
        check_store(store)
