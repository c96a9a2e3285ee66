"""`harness study leakage`: each chosen baseline trained twice with the same recipe, budget and seed,
once on a patch-random split (the seeds' protocol, BASELINES.md §1.4) and once on the harness's
patient-grouped split, both evaluated on their own test set.

Both arms are MLflow runs (run_type `study_arm`, tagged `protocol=patch_random` or `patient` with
their own split hash) under one parent (run_type `study`), so no leaderboard table ever ranks a
leaky run beside a clean one (§6 item 39); `harness.leaderboard.leakage` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness import tracking
from harness.config import ExperimentConfig
from harness.data.cache import open_patch_cache
from harness.data.manifest import read_manifest
from harness.data.splits import Split, patch_random_split, read_split, shared_patients, write_split
from harness.errors import InputError
from harness.experiment import ExperimentSetup, recipe_spec, set_up, train_tracked
from harness.floors import fit_floor_folds, floor_features
from harness.metrics import METRIC_NAMES

PATIENT, PATCH_RANDOM = "patient", "patch_random"
STUDY = "leakage"


@dataclass(frozen=True)
class Arm:
    """One side of the study: its protocol name and split."""

    protocol: str
    split: Split
    split_path: Path


def _arms(config: ExperimentConfig, setup: ExperimentSetup) -> list[Arm]:
    manifest, _ = read_manifest(setup.data.manifest_path)
    patient = read_split(setup.data.split_path)
    leaky = patch_random_split(manifest, folds=config.protocol.folds, test_fraction=config.protocol.test_fraction,
                               seed=config.protocol.seed)
    leaky_path = write_split(leaky, setup.data.split_path.parent)
    return [Arm(PATCH_RANDOM, leaky, leaky_path.resolve()), Arm(PATIENT, patient, setup.data.split_path)]


def _arm_tags(arm: Arm, shared: int) -> dict[str, str]:
    return {tracking.RUN_TYPE: "study_arm", "study": STUDY, tracking.PROTOCOL: arm.protocol,
            tracking.SPLIT_HASH: arm.split.hash, "shared_test_patients": str(shared)}


def _floor_arm(config: ExperimentConfig, setup: ExperimentSetup, name: str, arm: Arm, parent: str,
               features) -> str:
    manifest, _ = read_manifest(setup.data.manifest_path)
    shared = shared_patients(manifest, arm.split, config.protocol.search_fold)
    run = setup.tracker.start_run(
        setup.experiment_id, name=f"{name}-{arm.protocol}", parent=parent, params={"floor": name},
        tags={**setup.tags, tracking.BASELINE: name, tracking.FLOOR: "true",
              tracking.FOLD: str(config.protocol.search_fold), **_arm_tags(arm, shared)})
    fold = fit_floor_folds(name, features, manifest, arm.split, num_classes=len(setup.data.class_names),
                           seed=config.protocol.seed)[config.protocol.search_fold]
    metrics = {f"best_val_{k}": v for k, v in fold.val.metrics.items() if k in METRIC_NAMES}
    setup.tracker.log_metrics(run, metrics | {f"test_{k}": v for k, v in fold.test.metrics.items()}, step=1)
    setup.tracker.log_evaluation(run, "test", fold.test, setup.data.class_names)
    setup.tracker.finish(run, tracking.FINISHED)
    return run


def run_leakage_study(config: ExperimentConfig, baselines: list[str] | None = None,
                      on_arm: Callable[[str, str, float], None] | None = None) -> str:
    """Train every chosen baseline and floor (default: all the experiment lists) on both arms;
    returns the study's parent run id. `on_arm(name, protocol, test accuracy)` is called per arm."""
    deep = [b.name for b in config.baselines]
    chosen = baselines or [*config.floors, *deep]
    unknown = [b for b in chosen if b not in deep and b not in config.floors]
    if unknown:
        raise InputError(f"--baseline {unknown[0]!r}: not in the experiment; expected one of: "
                         + ", ".join([*config.floors, *deep]))
    if config.protocol.test_fraction == 0:
        raise InputError("key 'protocol.test_fraction' = 0: the leakage study compares test sets; set it above 0")
    setup = set_up(config, show_progress=True)
    arms = _arms(config, setup)
    parent = setup.tracker.start_run(
        setup.experiment_id, name=f"leakage-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}",
        tags={**setup.tags, tracking.RUN_TYPE: "study", "study": STUDY,
              "patch_random_split_hash": arms[0].split.hash},
        params={"baselines": ",".join(chosen), "fold": config.protocol.search_fold, "seed": config.protocol.seed,
                "max_epochs": config.search.max_epochs},
    )
    manifest, _ = read_manifest(setup.data.manifest_path)
    features = floor_features(open_patch_cache(setup.data.cache_path)) if set(chosen) & set(config.floors) else None
    try:
        for name in chosen:
            for arm in arms:
                if name in config.floors:
                    run = _floor_arm(config, setup, name, arm, parent, features)
                    accuracy = setup.tracker.client.get_run(run).data.metrics["test_accuracy"]
                else:
                    spec = recipe_spec(config, setup.data, name, fold=config.protocol.search_fold)
                    spec = spec.model_copy(update={"split_path": arm.split_path})
                    shared = shared_patients(manifest, arm.split, config.protocol.search_fold)
                    _, result = train_tracked(config, setup, spec, parent=parent, tags=_arm_tags(arm, shared))
                    accuracy = result.test.metrics["accuracy"]
                if on_arm is not None:
                    on_arm(name, arm.protocol, accuracy)
    except BaseException as exc:
        setup.tracker.finish(parent, tracking.FAILED, {tracking.ERROR: repr(exc)[-4000:]})
        raise
    setup.tracker.finish(parent, tracking.FINISHED)
    return parent
