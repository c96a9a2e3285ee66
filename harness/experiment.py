"""Driver-side set-up shared by `harness train` and `harness sweep`: data, MLflow experiment, run tags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import tracking
from harness.config import ExperimentConfig, split_point
from harness.data.prepare import PreparedData, load_or_index, prepare
from harness.train import EpochReport, FitResult, RunSpec, fit


@dataclass(frozen=True)
class ExperimentSetup:
    """A prepared dataset and an open MLflow experiment, with the tags every run of it carries."""

    data: PreparedData
    tracker: tracking.Tracker
    experiment_id: str
    tags: dict[str, str]
    notes: list[str]


def set_up(config: ExperimentConfig, *, show_progress: bool = False) -> ExperimentSetup:
    """Index (or load), split and cache the data, then open the MLflow experiment; returns both.

    Everything that can reject the input runs before the first file is written.
    """
    manifest, notes = load_or_index(config.dataset, show_progress=show_progress)
    data = prepare(
        manifest, config.dataset, config.protocol, config.output_dir.resolve() / "_data", show_progress=show_progress
    )
    uri = config.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    tracker = tracking.Tracker(uri)
    tags = {
        tracking.DATASET: config.dataset.name,
        tracking.SPLIT_HASH: data.split_hash,
        tracking.MANIFEST_HASH: data.manifest_hash,
        tracking.PROTOCOL: config.protocol.name,
        # Fallback masks are a stand-in for expert outlines: runs using them never meet published mIoU.
        tracking.ROI_SOURCE: data.mask_source,
        "git_commit": tracking.git_commit(),
        **tracking.environment_tags(),
    }
    return ExperimentSetup(
        data=data,
        tracker=tracker,
        experiment_id=tracker.experiment_id(config.name),
        tags=tags,
        notes=notes + list(data.notes),
    )


def recipe_spec(config: ExperimentConfig, data: PreparedData, baseline: str, *, fold: int) -> RunSpec:
    """Return the RunSpec of `baseline`'s published recipe, with the experiment's pinned values."""
    entry = next(b for b in config.baselines if b.name == baseline)
    space = config.baseline_space(baseline)
    params, model_kwargs = split_point({**space.recipe, **space.fixed})
    return RunSpec(
        baseline=baseline,
        num_classes=len(data.class_names),
        pretrained=entry.pretrained,
        params=params,
        model_kwargs=model_kwargs,
        manifest_path=data.manifest_path,
        cache_path=data.cache_path,
        mask_cache_path=data.mask_cache_path,
        split_path=data.split_path,
        fold=fold,
        max_epochs=config.search.max_epochs,
        patience=config.training.patience,
        seed=config.protocol.seed,
        device=config.training.device,
        threads=max(1, int(config.resources.cpu)),
        eval_batch_size=config.training.eval_batch_size,
        semantics=config.training.semantics,
        bn_recalibration=config.training.bn_recalibration,
    )


def train_tracked(
    config: ExperimentConfig,
    setup: ExperimentSetup,
    spec: RunSpec,
    on_epoch: Callable[[EpochReport], None] | None = None,
    *,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, FitResult]:
    """Fit one RunSpec as an MLflow run (run_type=train unless `tags` say otherwise, nested under
    `parent` if given); returns its run id and result."""
    run_id = setup.tracker.start_run(
        setup.experiment_id,
        name=f"{spec.baseline}-fold{spec.fold}",
        parent=parent,
        tags={
            **setup.tags,
            tracking.RUN_TYPE: "train",
            tracking.BASELINE: spec.baseline,
            tracking.FOLD: str(spec.fold),
            tracking.OBJECTIVE: config.search.metric,
            tracking.PRETRAINED: str(spec.pretrained) if spec.pretrained else "none",
            **(tags or {}),
        },
        params={**spec.params.model_dump(), **spec.model_kwargs, "epochs": spec.epochs, **spec.protocol_params},
    )

    def report(entry: EpochReport) -> None:
        tracking.log_epoch(
            setup.tracker, run_id, entry, objective=config.search.metric, class_names=setup.data.class_names
        )
        if on_epoch is not None:
            on_epoch(entry)

    with setup.tracker.ending(run_id):
        result = fit(spec, report)
    return run_id, result
