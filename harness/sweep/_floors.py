"""Floors in a sweep: each floor fitted on every fold and logged as the runs a deep baseline leaves
(one run for the search fold, like a trial's but of run_type `floor`, a fold run per fold under it,
and their ensemble), all tagged `floor=true`, so the leaderboard finds them with the same split hash
and marks them as the floor."""

from __future__ import annotations

from harness import tracking
from harness.data.cache import open_patch_cache
from harness.data.manifest import read_manifest
from harness.data.splits import read_split
from harness.experiment import ExperimentSetup, log_floor_fold
from harness.floors import FloorFold, fit_floor_folds, floor_features

from ._ensemble import log_fold_ensemble

RunType = tracking.RunType


def _floor_tags(setup: ExperimentSetup, name: str, objective: str) -> dict[str, str]:
    return {
        **setup.tags,
        tracking.FLOOR: "true",
        tracking.BASELINE: name,
        tracking.OBJECTIVE: objective,
        tracking.CPU_SHARE: "1",
        tracking.GPU_SHARE: "0",
        tracking.PRETRAINED: "none",
    }


def _log_folds(
    setup: ExperimentSetup, parent: str, folds: list[FloorFold], tags: dict[str, str], objective: str
) -> None:
    """Log a fold run per floor fold model under `parent`, then their ensemble when every fold has a test set."""
    name, classes = tags[tracking.BASELINE], setup.data.class_names
    runs = {}
    for fold in folds:
        with setup.tracker.run(
            setup.experiment_id,
            name=tracking.fold_name(name, fold.fold),
            run_type=RunType.FOLD,
            parent=parent,
            params={"floor": name},
            tags={**tags, tracking.FOLD: str(fold.fold)},
        ) as run_id:
            log_floor_fold(setup.tracker, run_id, fold, objective, classes)
        runs[fold.fold] = run_id
    tested = [(f.fold, f.test) for f in folds if f.test is not None]
    if len(tested) == len(folds):
        predictions = {fold: (runs[fold], test.predictions) for fold, test in tested}
        log_fold_ensemble(
            setup.tracker,
            setup.experiment_id,
            baseline=name,
            parent=parent,
            folds=predictions,
            tags=tags,
            class_names=classes,
        )


def track_floors(
    floors: list[str], setup: ExperimentSetup, parent: str, *, search_fold: int, objective: str, seed: int
) -> list[str]:
    """Fit and log every floor under sweep run `parent`; returns the floors it logged."""
    if not floors:
        return []
    data = setup.data
    manifest, _ = read_manifest(data.manifest_path)
    split = read_split(data.split_path)
    features = floor_features(open_patch_cache(data.cache_path))
    for name in floors:
        tags = _floor_tags(setup, name, objective)
        # Opened before fitting, so its wall time (the leaderboard's CPU-hours) covers every fold's fit.
        with setup.tracker.run(
            setup.experiment_id,
            name=f"{name} floor",
            run_type=RunType.FLOOR,
            parent=parent,
            params={"floor": name, "seed": seed},
            tags={**tags, tracking.TRIAL_ID: f"floor-{name}", tracking.FOLD: str(search_fold)},
        ) as trial:
            folds = fit_floor_folds(name, features, manifest, split, num_classes=len(data.class_names), seed=seed)
            log_floor_fold(setup.tracker, trial, folds[search_fold], objective, data.class_names)
            _log_folds(setup, trial, folds, tags, objective)
    return list(floors)
