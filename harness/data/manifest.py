"""The manifest: one row per image, the only thing the harness reads after indexing (DESIGN.md)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import write_atomically
from harness.errors import InputError

REQUIRED_COLUMNS = (
    "path",
    "rel_path",
    "label",
    "class_name",
    "patient_id",
    "dataset",
    "width",
    "height",
    "digest",
    "flags",
)
_META_KEY = b"histo_harness"
LAST_INDEX = "last-index.json"


def rows_sha256(frame: pd.DataFrame, columns: list[str]) -> str:
    """Return a SHA-256 over `frame`'s `columns`: one tab-separated line per row, rows sorted."""
    digest = hashlib.sha256()
    for row in sorted(frame[columns].itertuples(index=False, name=None)):
        digest.update(("\t".join(map(str, row)) + "\n").encode())
    return digest.hexdigest()


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Return a SHA-256 over what identifies the data (names, content digests, labels, patients,
    sizes), independent of where the root lies on disk."""
    return rows_sha256(manifest, ["rel_path", "digest", "label", "patient_id", "width", "height"])


def content_hash(manifest: pd.DataFrame) -> str:
    """Return a SHA-256 over the sorted (rel_path, digest) pairs: which files, holding which bytes."""
    return rows_sha256(manifest, ["rel_path", "digest"])


def index_record(manifest: pd.DataFrame) -> dict[str, Any]:
    """Return what the last-index record keeps of an index: its files' content hash and count."""
    return {"content_hash": content_hash(manifest), "files": len(manifest)}


def change_line(key: str, since: str, now: dict[str, Any], before: dict[str, Any]) -> str:
    """Return the line saying the files of `key` (a root, index_key) differ from `since` (an
    earlier index); `now` and `before` are index records."""
    return (
        f"{key} differs from {since}: {now['files']:,} files with content hash {now['content_hash'][:16]}, "
        f"were {before['files']:,} with {before['content_hash'][:16]}"
    )


def note_change_since_last_index(manifest: pd.DataFrame, key: str, directory: Path) -> str | None:
    """Record this index of `key` (a dataset root and the options that choose its files) in
    `directory`/last-index.json; returns one line when its files differ from the last index of the
    same key, else None."""
    path = directory / LAST_INDEX
    records = json.loads(path.read_text()) if path.is_file() else {}
    before = records.get(key)
    now = {**index_record(manifest), "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    records[key] = now
    write_atomically(path, json.dumps(records, indent=1).encode())
    if before is None or before["content_hash"] == now["content_hash"]:
        return None
    since = f"its last index ({before['indexed_at']})"
    return f"{change_line(key, since, now, before)}; the manifest hash, split hash and cache are new"


def write_manifest(manifest: pd.DataFrame, path: Path, *, root: Path, meta: dict[str, object]) -> Path:
    """Write the manifest as parquet, its `path` column relative to `root` (the dataset root its
    files lie below), with the resolved root, its hash and `meta` in the file metadata; returns the path."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    root = root.resolve()
    rows = manifest.reset_index(drop=True)
    table = pa.Table.from_pandas(rows.assign(path=_relative(rows.path, root)), preserve_index=False)
    meta = {**meta, "root": str(root), "manifest_hash": manifest_hash(manifest), "rows": len(manifest)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomically(path, buffer.getvalue().to_pybytes())
    return path


def _relative(paths: pd.Series, root: Path) -> pd.Series:
    """Return `paths` (absolute, below `root`) relative to `root`; string operations, as
    Path.relative_to takes seconds over the full IDC release."""
    prefix = str(root).rstrip("/") + "/"
    paths = paths.astype(str)
    outside = ~paths.str.startswith(prefix)
    if outside.any():
        raise ValueError(f"manifest path {paths[outside].iloc[0]} does not lie below the root {root}")
    return paths.str.slice(len(prefix))


def read_manifest(path: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Return the manifest rows, `path` joined to the root it records, and its metadata; a missing
    or foreign file, or one whose paths are not relative to its root, raises InputError."""
    if not path.is_file():
        raise InputError(f"{path}: manifest file not found (expected a parquet file written by `harness data index`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a parquet manifest ({exc})") from None
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise InputError(
            f"{path}: parquet file has no histo-harness metadata (expected a manifest from `harness data index`)"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: manifest lacks columns {missing} (written by an older harness?); "
            "index the dataset again with `harness data index`"
        )
    meta = json.loads(raw)
    return _below_root(table.to_pandas(), meta.get("root"), path), meta


def _below_root(manifest: pd.DataFrame, root: object, path: Path) -> pd.DataFrame:
    """Return `manifest` with its relative paths joined to `root`; raises InputError for a manifest
    without a root, or with a path that is absolute or climbs out of it."""
    relative = manifest.path.astype(str)
    outside = relative.str.startswith("/") | relative.str.contains(r"(?:^|/)\.\.(?:/|$)")
    if not isinstance(root, str) or outside.any():
        found = f"path {relative[outside].iloc[0]!r}" if outside.any() else "no root"
        raise InputError(
            f"{path}: manifest paths must be relative to the root it records, found {found} "
            "(written by an older harness?); index the dataset again with `harness data index`"
        )
    return manifest.assign(path=root.rstrip("/") + "/" + relative)
