"""Driver-side data preparation: index (or reuse a manifest), split by patient, pack the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import DatasetSpec, ProtocolSpec
from harness.errors import InputError

from . import idc
from .cache import build_patch_cache
from .catalog import DATASETS
from .manifest import manifest_hash, read_manifest, write_manifest
from .splits import Split, patient_split, write_split


@dataclass(frozen=True)
class PreparedData:
    """Absolute paths of a manifest, its split and its cache, with their hashes."""

    manifest_path: Path
    manifest_hash: str
    split_path: Path
    split_hash: str
    cache_path: Path
    class_names: tuple[str, ...]
    rows: int
    patients: int


def index_dataset(spec: DatasetSpec, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Return the manifest of `spec` and the warnings about what indexing skipped."""
    result = idc.index_idc(
        spec.root, allow_subset=spec.allow_subset, skip_bad=spec.skip_bad,
        edge_patches=spec.edge_patches, show_progress=show_progress,
    )
    return result.manifest, result.warnings + result.problems


def load_or_index(spec: DatasetSpec, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Return the manifest named in the config, or a fresh index of the dataset root."""
    if spec.manifest is None:
        return index_dataset(spec, show_progress=show_progress)
    manifest, meta = read_manifest(spec.manifest)
    if meta.get("dataset") != spec.name:
        raise InputError(f"{spec.manifest}: manifest of dataset {meta.get('dataset')!r}, expected {spec.name!r}")
    return manifest, []


def prepare(
    manifest: pd.DataFrame, dataset: str, protocol: ProtocolSpec, work_dir: Path, *, show_progress: bool = False
) -> PreparedData:
    """Write the manifest, its patient split and its patch cache under `work_dir`; returns their paths.

    The split is made before anything is written, so a protocol the data cannot satisfy leaves no file.
    """
    split: Split = patient_split(
        manifest, folds=protocol.folds, test_fraction=protocol.test_fraction, seed=protocol.seed
    )
    digest = manifest_hash(manifest)
    manifest_path = write_manifest(
        manifest, work_dir / "manifests" / f"{dataset}-{digest[:16]}.parquet", meta={"dataset": dataset}
    )
    split_path = write_split(split, work_dir / "splits")
    cache = build_patch_cache(
        manifest, digest, work_dir / "cache", patch_size=DATASETS[dataset].patch_size, show_progress=show_progress
    )
    return PreparedData(
        manifest_path=manifest_path.resolve(), manifest_hash=digest, split_path=split_path.resolve(),
        split_hash=split.hash, cache_path=cache.resolve(), class_names=DATASETS[dataset].class_names,
        rows=len(manifest), patients=manifest.patient_id.nunique(),
    )
