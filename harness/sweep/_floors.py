"""Floors in a sweep: each floor fitted on every fold and logged as the runs a deep baseline leaves
(one run for the search fold, like a trial's but of run_type `floor`, a fold run per fold under it,
and their ensemble), all tagged `floor=true`, so the leaderboard finds them with the same split hash
and marks them as the floor."""

from __future__ import annotations

from harness import tracking
from harness.data.cache import open_patch_cache
from harness.data.manifest import read_manifest
from harness.data.prepare import PreparedData
from harness.data.splits import read_split
from harness.floors import FloorFold, fit_floor_folds, floor_features
from harness.metrics import METRIC_NAMES
from harness.retrain import ensemble
from harness.train import Evaluation


def _metrics(val: Evaluation, test: Evaluation | None, objective: str) -> dict[str, float]:
    metrics = {f"best_val_{k}": v for k, v in val.metrics.items() if k in METRIC_NAMES}
    metrics |= {"best_epoch": 1.0, "objective": val.metrics[objective.removeprefix("val_")]}
    return metrics | ({f"test_{k}": v for k, v in test.metrics.items()} if test is not None else {})


def log_floor_fold(
    tracker: tracking.Tracker, run_id: str, fold: FloorFold, objective: str, class_names: tuple[str, ...]
) -> None:
    """Log one floor fold model's metrics and predictions (validation, and test if any) to `run_id`."""
    tracker.log_metrics(run_id, _metrics(fold.val, fold.test, objective), step=1)
    tracker.log_evaluation(run_id, "val", fold.val, class_names)
    if fold.test is not None:
        tracker.log_evaluation(run_id, "test", fold.test, class_names)


def track_floors(
    floors: list[str],
    data: PreparedData,
    tracker: tracking.Tracker,
    experiment_id: str,
    parent: str,
    tags: dict[str, str],
    *,
    search_fold: int,
    objective: str,
    seed: int,
) -> list[str]:
    """Fit and log every floor under sweep run `parent`; returns the floors it logged."""
    if not floors:
        return []
    manifest, _ = read_manifest(data.manifest_path)
    split = read_split(data.split_path)
    features = floor_features(open_patch_cache(data.cache_path))
    common = {
        **tags,
        tracking.FLOOR: "true",
        tracking.OBJECTIVE: objective,
        tracking.CPU_SHARE: "1",
        tracking.GPU_SHARE: "0",
        tracking.PRETRAINED: "none",
    }
    for name in floors:
        tagged = {**common, tracking.BASELINE: name}
        # Started before fitting, so its wall time (the leaderboard's CPU-hours) covers every fold's fit.
        trial = tracker.start_run(
            experiment_id,
            name=f"{name}-floor",
            parent=parent,
            params={"floor": name, "seed": seed},
            tags={
                **tagged,
                tracking.RUN_TYPE: "floor",
                tracking.TRIAL_ID: f"floor-{name}",
                tracking.FOLD: str(search_fold),
            },
        )
        folds = fit_floor_folds(name, features, manifest, split, num_classes=len(data.class_names), seed=seed)
        log_floor_fold(tracker, trial, folds[search_fold], objective, data.class_names)
        fold_runs = []
        for fold in folds:
            run = tracker.start_run(
                experiment_id,
                name=f"{name}-fold{fold.fold}",
                parent=trial,
                params={"floor": name},
                tags={**tagged, tracking.RUN_TYPE: "fold", tracking.FOLD: str(fold.fold)},
            )
            log_floor_fold(tracker, run, fold, objective, data.class_names)
            tracker.finish(run, tracking.FINISHED)
            fold_runs.append(run)
        if all(f.test is not None for f in folds):
            combined = ensemble([f.test.predictions for f in folds])
            run = tracker.start_run(
                experiment_id,
                name=f"{name}-ensemble",
                parent=trial,
                params={"folds": len(folds), "combination": "mean_softmax"},
                tags={**tagged, tracking.RUN_TYPE: "ensemble", "fold_run_ids": ",".join(fold_runs)},
            )
            tracker.log_metrics(run, {f"test_{k}": v for k, v in combined.metrics.items()}, step=0)
            tracker.log_evaluation(run, "test", combined, data.class_names)
            tracker.finish(run, tracking.FINISHED)
            single = [f.test.metrics["accuracy"] for f in folds]
            tracker.log_metrics(
                trial,
                {
                    "ensemble_test_accuracy": combined.metrics["accuracy"],
                    "folds_mean_test_accuracy": sum(single) / len(single),
                },
                step=0,
            )
        tracker.finish(trial, tracking.FINISHED)
    return list(floors)
