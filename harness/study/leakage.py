"""`harness study leakage`: each chosen baseline cross-validated twice with the same recipe, epoch
budget and seed, once over patch-level folds (the seeds' protocol, BASELINES.md §1.4) and once over
patient-level folds, every fold of each arm tested on that arm's own held-out fold.

The k folds of an arm cover every image once; for held-out fold f the next fold is the validation
fold (early stopping) and the remaining k-2 folds train (`splits.held_out_fold`). Every arm x fold
is one MLflow run (run_type `study_arm`, tagged `protocol=patch_random` or `patient`, `fold=f` and
the split hash it trained with) under one parent (run_type `study`), so no leaderboard table ever
ranks a leaky run beside a clean one (§6 item 39); `harness.leaderboard.leakage` reads them back
and pairs the arms fold by fold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness import tracking
from harness.config import ExperimentConfig
from harness.data.cache import open_patch_cache
from harness.data.manifest import read_manifest
from harness.data.splits import Split, held_out_fold, patch_random_split, patient_split, shared_patients, write_split
from harness.errors import InputError
from harness.experiment import ExperimentSetup, log_floor_fold, set_up, train_tracked
from harness.floors import fit_floor_fold, floor_features
from harness.run_spec import RunSpec
from harness.train import EpochReport

STUDY = "leakage"
RunType = tracking.RunType
# The validation fold of every held-out split (held_out_fold puts the fold after the test fold first).
VALIDATION_FOLD = 0
# Told after each epoch of a model's arm: the model, the arm's protocol and held-out fold, the
# epoch's report, and the arm's epoch budget.
OnArmEpoch = Callable[[str, str, int, EpochReport, int], None]


@dataclass(frozen=True)
class ArmFold:
    """One arm on one fold: its protocol, the held-out fold, the split that holds it out, and how
    many of its test patients also have training images."""

    protocol: str
    fold: int
    split: Split
    split_path: Path
    shared: int


def _cross_validations(config: ExperimentConfig, manifest: pd.DataFrame) -> dict[str, Split]:
    """Return each arm's k-fold split over every image (no separate test set)."""
    k, seed = config.protocol.folds, config.protocol.seed
    return {
        tracking.PATCH_RANDOM: patch_random_split(manifest, folds=k, test_fraction=0, seed=seed),
        tracking.PATIENT: patient_split(manifest, folds=k, test_fraction=0, seed=seed),
    }


def _arm_folds(splits: dict[str, Split], manifest: pd.DataFrame, directory: Path) -> list[ArmFold]:
    """Return every (arm, held-out fold), fold by fold, each split written beside the experiment's."""
    arm_folds = []
    for fold in range(next(iter(splits.values())).folds):
        for protocol, split in splits.items():
            held = held_out_fold(split, fold)
            arm_folds.append(
                ArmFold(
                    protocol,
                    fold,
                    held,
                    write_split(held, directory).resolve(),
                    shared_patients(manifest, held, VALIDATION_FOLD),
                )
            )
    return arm_folds


def _arm_tags(arm: ArmFold) -> dict[str, str]:
    return {
        "study": STUDY,
        tracking.PROTOCOL: arm.protocol,
        tracking.FOLD: str(arm.fold),
        tracking.SPLIT_HASH: arm.split.hash,
        "shared_test_patients": str(arm.shared),
    }


def _floor_arm(
    setup: ExperimentSetup,
    config: ExperimentConfig,
    name: str,
    arm: ArmFold,
    parent: str,
    features: np.ndarray,
    manifest: pd.DataFrame,
) -> float:
    """Fit floor `name` on the arm's training folds, log it as a run under `parent`; returns its
    test accuracy on the held-out fold."""
    with setup.tracker.run(
        setup.experiment_id,
        name=tracking.fold_name(f"{name} {arm.protocol}", arm.fold),
        run_type=RunType.STUDY_ARM,
        parent=parent,
        params={"floor": name},
        tags={**setup.tags, tracking.BASELINE: name, tracking.FLOOR: "true", **_arm_tags(arm)},
    ) as run:
        fold = fit_floor_fold(
            name,
            features,
            manifest,
            arm.split,
            VALIDATION_FOLD,
            num_classes=len(setup.data.class_names),
            seed=config.protocol.seed,
        )
        log_floor_fold(setup.tracker, run, fold, config.search.metric, setup.data.class_names)
    assert fold.test is not None, "an arm's split holds its fold out as the test set"
    return fold.test.metrics["accuracy"]


def _model_arm(
    setup: ExperimentSetup,
    config: ExperimentConfig,
    name: str,
    arm: ArmFold,
    parent: str,
    epochs: int,
    on_epoch: OnArmEpoch | None = None,
) -> float:
    """Train baseline `name`'s recipe for at most `epochs` on the arm's training folds, as a run
    under `parent`, telling `on_epoch` each epoch; returns its test accuracy on the held-out fold."""
    data = dataclasses.replace(setup.data, split_path=arm.split_path, split_hash=arm.split.hash)
    spec = RunSpec.build(config, data, name, fold=VALIDATION_FOLD).model_copy(update={"max_epochs": epochs})

    def tell(entry: EpochReport) -> None:
        if on_epoch is not None:
            on_epoch(name, arm.protocol, arm.fold, entry, spec.epochs)

    _, result = train_tracked(
        config,
        setup,
        spec,
        tell,
        parent=parent,
        run_type=RunType.STUDY_ARM,
        name=tracking.fold_name(f"{name} {arm.protocol}", arm.fold),
        tags=_arm_tags(arm),
    )
    assert result.test is not None, "an arm's split holds its fold out as the test set"
    return result.test.metrics["accuracy"]


def _chosen(config: ExperimentConfig, baselines: list[str] | None) -> list[str]:
    """Return the models to study, or raise InputError for a name or protocol the study cannot use."""
    deep = [b.name for b in config.baselines]
    chosen = baselines or [*config.floors, *deep]
    unknown = [b for b in chosen if b not in deep and b not in config.floors]
    if unknown:
        raise InputError(
            f"--baseline {unknown[0]!r}: not in the experiment; expected one of: " + ", ".join([*config.floors, *deep])
        )
    if config.protocol.folds < 3:
        raise InputError(
            f"key 'protocol.folds' = {config.protocol.folds}: the leakage study holds out one fold "
            "for test and one for validation, so it needs at least 3"
        )
    return chosen


def run_leakage_study(
    config: ExperimentConfig,
    baselines: list[str] | None = None,
    *,
    epochs: int | None = None,
    on_arm: Callable[[str, str, int, float], None] | None = None,
    on_epoch: OnArmEpoch | None = None,
) -> str:
    """Cross-validate every chosen baseline and floor (default: all the experiment lists) in both
    arms over `protocol.folds` folds, each baseline for `epochs` (default `search.max_epochs`);
    returns the study's parent run id. `on_arm(name, protocol, fold, test accuracy)` is called per
    arm and fold, `on_epoch` (OnArmEpoch) per epoch of a model's arm."""
    chosen = _chosen(config, baselines)
    epochs = epochs or config.search.max_epochs
    setup = set_up(config, show_progress=True)
    manifest, _ = read_manifest(setup.data.manifest_path)
    splits = _cross_validations(config, manifest)
    arm_folds = _arm_folds(splits, manifest, setup.data.split_path.parent)
    with setup.tracker.run(
        setup.experiment_id,
        name=f"leakage {config.name} {datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        run_type=RunType.STUDY,
        tags={
            **setup.tags,
            "study": STUDY,
            **{f"{protocol}_split_hash": split.hash for protocol, split in splits.items()},
        },
        params={
            "baselines": ",".join(chosen),
            "folds": config.protocol.folds,
            "seed": config.protocol.seed,
            "epochs": epochs,
        },
    ) as parent:
        floors = set(chosen) & set(config.floors)
        features = floor_features(open_patch_cache(setup.data.cache_path)) if floors else None
        for name in chosen:
            for arm in arm_folds:
                if features is not None and name in config.floors:
                    accuracy = _floor_arm(setup, config, name, arm, parent, features, manifest)
                else:
                    accuracy = _model_arm(setup, config, name, arm, parent, epochs, on_epoch)
                if on_arm is not None:
                    on_arm(name, arm.protocol, arm.fold, accuracy)
    return parent
