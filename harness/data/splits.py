"""Patient-grouped splits: a patient-disjoint test set, then stratified group k-fold (BASELINES.md §1.5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from harness.atomic import replacing
from harness.errors import InputError

from .manifest import rows_sha256

TEST = "test"
CV = "cv"


class ProtocolSpec(BaseModel):
    """The patient-grouped protocol of BASELINES.md §1.5, or a dataset's published split by name:
    folds, the test share (the harness's own split only), the split's seed, and the fold a sweep
    searches on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # patient: the harness's own split; eva: eva's published split of the dataset (the datasets'
    # `protocols`), its validation part as the test set and the folds inside its training part.
    name: Literal["patient", "eva"] = "patient"
    folds: int = Field(5, ge=2, le=20)
    test_fraction: float = Field(0.2, ge=0, le=0.5)
    seed: int = 0
    search_fold: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fold_in_range(self) -> ProtocolSpec:
        if self.search_fold >= self.folds:
            raise ValueError(f"search_fold must be below folds ({self.folds})")
        return self


@dataclass(frozen=True)
class Split:
    """Per-row assignment aligned with the manifest: `rel_path`, `digest` (the file's content),
    `split` in {test, cv} and `fold` (-1 for test)."""

    assignments: pd.DataFrame
    folds: int
    seed: int
    test_fraction: float

    @property
    def hash(self) -> str:
        """SHA-256 over the sorted (rel_path, digest, split, fold) rows; equal hash = same split of the same files."""
        return split_hash(self.assignments)

    def rows(self, *, split: str, fold: int | None = None, exclude_fold: int | None = None) -> np.ndarray:
        """Return manifest row indices of `split`, optionally restricted to or excluding one fold."""
        a = self.assignments
        mask = a.split == split
        if fold is not None:
            mask &= a.fold == fold
        if exclude_fold is not None:
            mask &= a.fold != exclude_fold
        return np.flatnonzero(mask.to_numpy())


COLUMNS = ["rel_path", "digest", "split", "fold"]


def split_hash(assignments: pd.DataFrame) -> str:
    """Return the SHA-256 of the sorted (rel_path, digest, split, fold) rows."""
    return rows_sha256(assignments.astype({"fold": int}), COLUMNS)


def _assignments(manifest: pd.DataFrame, split: np.ndarray, fold: np.ndarray) -> pd.DataFrame:
    """Return the assignment frame of `manifest`'s rows. A frame built without files (no `digest`
    column) gets empty digests, so its hash covers names only."""
    digests = manifest["digest"].to_numpy() if "digest" in manifest.columns else np.full(len(manifest), "")
    return pd.DataFrame({"rel_path": manifest.rel_path.to_numpy(), "digest": digests, "split": split, "fold": fold})


def patient_split(
    manifest: pd.DataFrame,
    *,
    folds: int,
    test_fraction: float,
    seed: int,
    stratify_on: str = "label",
    group_on: str = "patient_id",
) -> Split:
    """Hold out a patient-disjoint test set, then split the rest into `folds` patient-grouped folds.

    Both steps use StratifiedGroupKFold(shuffle=True, random_state=seed); the test set is fold 0
    of round(1 / test_fraction) splits (none when test_fraction is 0, as in 001's BACH protocol),
    so a patient never appears in two folds or in a fold and test.
    """
    groups = manifest[group_on].to_numpy()
    labels = manifest[stratify_on].to_numpy()
    n_groups = len(np.unique(groups))
    split = np.full(len(manifest), CV, dtype=object)
    if test_fraction > 0:
        n_test_splits = round(1 / test_fraction)
        if n_groups < n_test_splits + folds - 1:
            raise InputError(
                f"protocol: {n_groups} patients cannot make a 1/{n_test_splits} test set plus {folds} folds "
                f"(need at least {n_test_splits + folds - 1}); lower protocol.folds or protocol.test_fraction"
            )
        outer = StratifiedGroupKFold(n_splits=n_test_splits, shuffle=True, random_state=seed)
        _, test_idx = next(outer.split(np.zeros(len(labels)), labels, groups))
        split[test_idx] = TEST
    elif n_groups < folds:
        raise InputError(f"protocol: {n_groups} patients cannot make {folds} folds; lower protocol.folds")
    fold = _grouped_folds(labels, groups, split == CV, folds, seed)
    return Split(assignments=_assignments(manifest, split, fold), folds=folds, seed=seed, test_fraction=test_fraction)


def _grouped_folds(labels: np.ndarray, groups: np.ndarray, cv: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Return each row's fold: StratifiedGroupKFold(shuffle, seed) over the rows `cv` marks, -1 elsewhere."""
    fold = np.full(len(labels), -1, dtype=np.int64)
    cv_idx = np.flatnonzero(cv)
    inner = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(inner.split(np.zeros(len(cv_idx)), labels[cv_idx], groups[cv_idx])):
        fold[cv_idx[val_idx]] = k
    return fold


def fixed_test_split(
    manifest: pd.DataFrame,
    test: np.ndarray,
    *,
    folds: int,
    seed: int,
    what: str,
    stratify_on: str = "label",
    group_on: str = "patient_id",
) -> Split:
    """Return a split whose test set is the rows `test` marks (a published split's held-out part)
    and whose other rows form `folds` patient-grouped folds, as `patient_split` makes them.

    Raises InputError naming `what` (the protocol) when the rest holds fewer patients than folds.
    """
    groups, labels = manifest[group_on].to_numpy(), manifest[stratify_on].to_numpy()
    cv = ~np.asarray(test, dtype=bool)
    n_groups, largest = len(np.unique(groups[cv])), int(np.bincount(labels[cv]).max())
    # StratifiedGroupKFold refuses more folds than the largest class has images.
    if min(n_groups, largest) < folds:
        raise InputError(
            f"protocol: the training part of {what} holds {n_groups} patients and at most {largest} images "
            f"of a class, too few for {folds} folds; lower protocol.folds"
        )
    split = np.where(cv, CV, TEST).astype(object)
    fold = _grouped_folds(labels, groups, cv, folds, seed)
    fraction = float((~cv).mean())
    return Split(assignments=_assignments(manifest, split, fold), folds=folds, seed=seed, test_fraction=fraction)


def patch_random_split(
    manifest: pd.DataFrame, *, folds: int, test_fraction: float, seed: int, stratify_on: str = "label"
) -> Split:
    """Return the seeds' split: the same test fraction and folds as `patient_split`, drawn over
    images with StratifiedKFold, so a patient's images land on both sides (BASELINES.md §1.4).
    Only the leakage study uses it, to measure what that costs."""
    labels = manifest[stratify_on].to_numpy()
    split = np.full(len(manifest), CV, dtype=object)
    if test_fraction > 0:
        outer = StratifiedKFold(n_splits=round(1 / test_fraction), shuffle=True, random_state=seed)
        _, test_idx = next(outer.split(np.zeros(len(labels)), labels))
        split[test_idx] = TEST
    fold = np.full(len(manifest), -1, dtype=np.int64)
    cv_idx = np.flatnonzero(split == CV)
    inner = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(inner.split(np.zeros(len(cv_idx)), labels[cv_idx])):
        fold[cv_idx[val_idx]] = k
    return Split(assignments=_assignments(manifest, split, fold), folds=folds, seed=seed, test_fraction=test_fraction)


def held_out_fold(split: Split, fold: int) -> Split:
    """Return a split of a test-free k-fold `split` in which fold `fold` is the test set and the
    other folds are renumbered 0..k-2 starting after it (so validation fold 0 is fold+1 mod k).
    Rotating `fold` over 0..k-1 tests every image once, as cross-validation does."""
    a = split.assignments
    if (a.split == TEST).any():
        raise ValueError("held_out_fold needs a split without a test set (test_fraction 0)")
    if not 0 <= fold < split.folds:
        raise ValueError(f"fold {fold} is not in 0..{split.folds - 1}")
    test = (a.fold == fold).to_numpy()
    renumbered = np.where(test, -1, (a.fold.to_numpy() - fold - 1) % split.folds)
    assignments = a.assign(split=np.where(test, TEST, CV).astype(object), fold=renumbered.astype(np.int64))
    return Split(assignments=assignments, folds=split.folds - 1, seed=split.seed, test_fraction=1 / split.folds)


def shared_patients(manifest: pd.DataFrame, split: Split, fold: int) -> int:
    """Return how many test patients also have images among the training folds of `fold`."""
    patients = manifest.patient_id.to_numpy()
    train = set(patients[split.rows(split=CV, exclude_fold=fold)])
    return len(train & set(patients[split.rows(split=TEST)]))


def write_split(split: Split, directory: Path) -> Path:
    """Write the assignments as `split-<hash>.parquet` in `directory` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"split-{split.hash[:16]}.parquet"
    if not path.exists():
        # Two sweeps preparing the same data at once each write their own scratch file (the same
        # split), and the second move in place is harmless.
        with replacing(path) as tmp:
            frame = split.assignments.assign(folds=split.folds, seed=split.seed, test_fraction=split.test_fraction)
            frame.to_parquet(tmp)
    return path


def read_split(path: Path) -> Split:
    """Read a split written by write_split."""
    frame = pd.read_parquet(path)
    return Split(
        assignments=frame[COLUMNS],
        folds=int(frame.folds.iloc[0]),
        seed=int(frame.seed.iloc[0]),
        test_fraction=float(frame.test_fraction.iloc[0]),
    )
