"""The manifest: one row per image, the only thing the harness reads after indexing (DESIGN.md)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import InputError

REQUIRED_COLUMNS = ("path", "rel_path", "label", "class_name", "patient_id", "dataset", "width", "height", "flags")
_META_KEY = b"histo_harness"


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Return a SHA-256 over what identifies the data, independent of where the root lies on disk."""
    rows = manifest.sort_values("rel_path")[["rel_path", "label", "patient_id", "width", "height"]]
    digest = hashlib.sha256()
    for rel_path, label, patient, width, height in rows.itertuples(index=False):
        digest.update(f"{rel_path}\t{label}\t{patient}\t{width}\t{height}\n".encode())
    return digest.hexdigest()


def write_manifest(manifest: pd.DataFrame, path: Path, *, meta: dict[str, object]) -> Path:
    """Write the manifest as parquet with its hash and `meta` in the file metadata; returns the path."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    table = pa.Table.from_pandas(manifest.reset_index(drop=True), preserve_index=False)
    meta = {**meta, "manifest_hash": manifest_hash(manifest), "rows": len(manifest)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a killed index never leaves a truncated manifest.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_manifest(path: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Return the manifest rows and its metadata; a missing or foreign file raises InputError."""
    if not path.is_file():
        raise InputError(f"{path}: manifest file not found (expected a parquet file written by `harness data index`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a parquet manifest ({exc})") from None
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise InputError(f"{path}: parquet file has no histo-harness metadata (expected a manifest from `harness data index`)")
    return table.to_pandas(), json.loads(raw)
