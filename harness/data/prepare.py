"""Driver-side data preparation: index (or reuse a manifest), split by patient, pack the cache."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.errors import InputError

from .cache import StaleFiles, build_image_cache, build_patch_cache, image_cache_key
from .datasets import DatasetSpec, DatasetTraits, dataset
from .manifest import (
    change_line,
    index_record,
    manifest_hash,
    note_change_since_last_index,
    read_manifest,
    write_manifest,
)
from .protocols import named_split
from .splits import ProtocolSpec, Split, patient_split, write_split
from .stain import stain_normaliser


@dataclass(frozen=True)
class PreparedData:
    """Absolute paths of a manifest, its split and its caches, with their hashes."""

    manifest_path: Path
    manifest_hash: str
    split_path: Path
    split_hash: str
    cache_path: Path
    mask_cache_path: Path | None
    mask_source: str
    class_names: tuple[str, ...]
    rows: int
    patients: int
    notes: tuple[str, ...] = ()

    def moved(self, folder: Path, to: Path) -> PreparedData:
        """Return these data with every path under `folder` (the driver's work folder) moved to
        `to` (where another machine mounts it)."""

        def move(path: Path) -> Path:
            return to / path.relative_to(folder)

        return dataclasses.replace(
            self,
            manifest_path=move(self.manifest_path),
            split_path=move(self.split_path),
            cache_path=move(self.cache_path),
            mask_cache_path=move(self.mask_cache_path) if self.mask_cache_path else None,
        )


def index_dataset(spec: DatasetSpec, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Return the manifest of `spec` and what indexing reported."""
    result = dataset(spec.name).index(spec, show_progress)
    return result.manifest, result.warnings + result.problems + _colour_modes(result.manifest, strict=spec.strict)


# How each non-RGB colour mode becomes RGB in the caches: PIL's convert("RGB").
CONVERSIONS = {
    "L": "grey replicated to three channels",
    "LA": "grey replicated to three channels, alpha dropped",
    "RGBA": "alpha dropped",
    "P": "palette colours looked up",
    "CMYK": "converted by PIL's CMYK formula",
}


def _colour_modes(manifest: pd.DataFrame, *, strict: bool) -> list[str]:
    """Return a warning per non-RGB image (flagged `mode_<M>` in the manifest) and their count;
    with `strict`, raise InputError naming them instead."""
    modes = manifest["flags"].str.extract(r"mode_([^;]+)", expand=False)
    odd = manifest.assign(mode=modes)[modes.notna()]
    if odd.empty:
        return []
    lines = [
        f"{path}: colour mode {mode}, not RGB; {CONVERSIONS.get(mode, 'converted by PIL')} in the cache"
        for path, mode in zip(odd["path"], odd["mode"].astype(str))
    ]
    if strict:
        raise InputError("\n".join([f"{len(odd)} image(s) are not RGB (dataset.strict / --strict):", *lines]))
    counts = ", ".join(f"{n} {mode}" for mode, n in odd["mode"].value_counts().items())
    return lines + [f"{len(odd)} of {len(manifest):,} images are not RGB ({counts}); flagged mode_<M> in the manifest"]


def index_key(spec: DatasetSpec) -> str:
    """Return what names one root's index in the last-index record: the dataset, its resolved root
    and edge_patches, the one option that changes which files a root yields."""
    return f"{spec.name} root {spec.root.resolve()}" + ("" if spec.edge_patches == "pad" else " (edge_patches: drop)")


def reindex_command(spec: DatasetSpec) -> str:
    """Return the `harness data index` command that writes `spec.manifest` anew from `spec.root`."""
    options = ["--dataset", spec.name, "--root", str(spec.root.resolve())]
    options += ["--roi-dir", str(spec.roi_dir)] if spec.roi_dir else []
    flags = {"--allow-subset": spec.allow_subset, "--skip-bad": spec.skip_bad, "--strict": spec.strict}
    options += [flag for flag, on in flags.items() if on]
    return shlex.join(["harness", "data", "index", *options, "--out", str(spec.manifest)])


def load_or_index(spec: DatasetSpec, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Return the manifest named in the config, or a fresh index of the dataset root.

    A manifest belongs to the root it was indexed from: under another root it raises InputError
    saying how to index that root instead.
    """
    if spec.manifest is None:
        return index_dataset(spec, show_progress=show_progress)
    manifest, meta = read_manifest(spec.manifest)
    if meta.get("dataset") != spec.name:
        raise InputError(f"{spec.manifest}: manifest of dataset {meta.get('dataset')!r}, expected {spec.name!r}")
    if meta["root"] != str(spec.root.resolve()):
        raise InputError(
            f"{spec.manifest}: manifest of {spec.name} root {meta['root']}, but the dataset root is "
            f"{spec.root.resolve()}; index that root with `{reindex_command(spec)}`"
        )
    return manifest, []


def _select(manifest: pd.DataFrame, split: Split, spec: DatasetSpec) -> tuple[pd.DataFrame, Split]:
    """Keep one magnification after splitting on all of them, so a patient's images at every
    magnification fall on the same side (BASELINES.md §1.2)."""
    if spec.magnification == "all":
        return manifest, split
    keep = (manifest.magnification == spec.magnification).to_numpy()
    if not keep.any():
        raise InputError(f"key 'dataset.magnification' = {spec.magnification}: no image at that magnification")
    chosen = split.assignments[keep].reset_index(drop=True)
    return manifest[keep].reset_index(drop=True), Split(chosen, split.folds, split.seed, split.test_fraction)


def _build_caches(
    manifest: pd.DataFrame,
    digest: str,
    spec: DatasetSpec,
    traits: DatasetTraits,
    folder: Path,
    *,
    normalise: Callable[[np.ndarray], np.ndarray] | None,
    show_progress: bool,
) -> tuple[Path, Path | None]:
    """Return the image (or patch) cache of `manifest` and its mask cache, built once under `folder`;
    a file changed since it was indexed raises InputError saying so."""
    try:
        if traits.storage == "patches":
            patches = build_patch_cache(
                manifest, digest, folder, patch_size=traits.size[0], show_progress=show_progress
            )
            return patches, None
        key = image_cache_key(digest, traits.size, spec.stain, spec.stain_reference, traits.mask_source)
        return build_image_cache(
            manifest,
            key,
            folder,
            size=traits.size,
            normalise=normalise,
            masks=traits.mask_source,
            show_progress=show_progress,
        )
    except StaleFiles as exc:
        raise InputError(_stale_line(exc, manifest, spec)) from None


def _stale_line(stale: StaleFiles, manifest: pd.DataFrame, spec: DatasetSpec) -> str:
    """Return the line refusing a cache of `manifest` whose files changed since they were indexed:
    the line a fresh index prints for a changed root, the first file, and what to do."""
    digests = manifest.digest.to_numpy(copy=True)
    digests[list(stale.now)] = list(stale.now.values())
    now = manifest.assign(digest=digests).dropna(subset=["digest"])
    since = f"its last index, {spec.manifest}" if spec.manifest else "the index this command made"
    remedy = f"index it again with `{reindex_command(spec)}`" if spec.manifest else "run the command again"
    first = manifest.rel_path.iloc[min(stale.now)]
    return (
        f"{change_line(index_key(spec), since, index_record(now), index_record(manifest))}; "
        f"{len(stale.now):,} file(s) changed or gone since (first {first}), and no cache is built from them: {remedy}"
    )


def _manifest_name(dataset_name: str, digest: str) -> str:
    """Return the file name a prepared manifest of `dataset_name` with hash `digest` is written under."""
    return f"{dataset_name}-{digest[:16]}.parquet"


def manifests_beside(path: Path) -> list[Path]:
    """Return the prepared manifests of the same dataset as the manifest `path` in its folder (other
    data prepared there), whether or not `path` itself exists."""
    dataset_name = path.stem.rsplit("-", 1)[0]
    return sorted(path.parent.glob(_manifest_name(dataset_name, "*")))


def prepare(
    manifest: pd.DataFrame, spec: DatasetSpec, protocol: ProtocolSpec, work_dir: Path, *, show_progress: bool = False
) -> PreparedData:
    """Write the manifest, its split (patient-grouped, or a dataset's published one by name) and its
    caches under `work_dir`; returns their paths.

    The split is made before anything is written, so a protocol the data cannot satisfy leaves no
    file; the caches come next, so a file changed since it was indexed leaves none either.
    A fresh index of `spec.root` (no dataset.manifest given) is recorded beside the manifests, with a
    note when the root's files differ from its last recorded index.
    """
    traits = spec.traits()
    indexed = manifest
    manifest, split, notes = _split(manifest, spec, protocol)
    manifest, split = _select(manifest, split, spec)
    normalise = stain_normaliser(spec.stain, spec.stain_reference)
    digest = manifest_hash(manifest)
    # First, as it reads every file and refuses one changed since it was indexed.
    cache, masks = _build_caches(
        manifest, digest, spec, traits, work_dir / "cache", normalise=normalise, show_progress=show_progress
    )
    # Recorded only now that nothing can reject the input, so a rejected run cannot swallow the note.
    change = None if spec.manifest else note_change_since_last_index(indexed, index_key(spec), work_dir / "manifests")
    manifest_path = write_manifest(
        manifest,
        work_dir / "manifests" / _manifest_name(spec.name, digest),
        root=spec.root,
        meta={"dataset": spec.name},
    )
    split_path = write_split(split, work_dir / "splits")
    return PreparedData(
        manifest_path=manifest_path.resolve(),
        manifest_hash=digest,
        split_path=split_path.resolve(),
        split_hash=split.hash,
        cache_path=cache.resolve(),
        mask_cache_path=masks.resolve() if masks else None,
        mask_source=traits.mask_source,
        class_names=traits.class_names,
        rows=len(manifest),
        patients=manifest.patient_id.nunique(),
        notes=(*notes, *([change] if change else [])),
    )


def _split(manifest: pd.DataFrame, spec: DatasetSpec, protocol: ProtocolSpec) -> tuple[pd.DataFrame, Split, list[str]]:
    """Return the rows the protocol keeps, their split, and notes on what the data lack of a
    published protocol (the harness's own keeps every row)."""
    if protocol.name == "patient":
        split = patient_split(manifest, folds=protocol.folds, test_fraction=protocol.test_fraction, seed=protocol.seed)
        return manifest, split, []
    return named_split(manifest, spec, protocol.name, folds=protocol.folds, seed=protocol.seed)
