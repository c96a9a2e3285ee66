"""What `harness train`, the sweep and the studies share on the driver: the prepared data, the
MLflow experiment and the tags of its runs, and how a fit and a floor fold are logged to a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness import tracking
from harness.config import ExperimentConfig
from harness.data.prepare import PreparedData, load_or_index, prepare
from harness.evaluation import Evaluation
from harness.floors import FloorFold
from harness.metrics import METRIC_NAMES
from harness.preflight import check_outputs, optuna_store, tracking_store
from harness.run_spec import RunSpec
from harness.train import EpochReport, FitResult, fit


@dataclass(frozen=True)
class ExperimentSetup:
    """A prepared dataset and an open MLflow experiment, with the tags every run of it carries."""

    data: PreparedData
    tracker: tracking.Tracker
    experiment_id: str
    tags: dict[str, str]
    notes: list[str]


def set_up(config: ExperimentConfig, *, show_progress: bool = False, sweep: bool = False) -> ExperimentSetup:
    """Index (or load), split and cache the data, then open the MLflow experiment; returns both.

    Everything that can reject the input runs before the first file is written, starting with the
    folders the command writes to (a `sweep` also writes Tune's storage and the Optuna store).
    """
    check_outputs(
        output_dir=config.output_dir,
        storage_path=config.resolved_storage_path() if sweep else None,
        stores=(
            tracking_store(config.resolved_tracking_uri()),
            *([optuna_store(config.resolved_optuna_storage())] if sweep else []),
        ),
    )
    manifest, notes = load_or_index(config.dataset, show_progress=show_progress)
    data = prepare(
        manifest, config.dataset, config.protocol, config.output_dir.resolve() / "_data", show_progress=show_progress
    )
    tracker = tracking.open_store(config.resolved_tracking_uri())
    tags = {
        tracking.DATASET: config.dataset.name,
        tracking.DATASET_ROOT: str(config.dataset.root),
        tracking.SPLIT_HASH: data.split_hash,
        tracking.MANIFEST_HASH: data.manifest_hash,
        tracking.PROTOCOL: config.protocol.name,
        # Fallback masks are a stand-in for expert outlines: runs using them never meet published mIoU.
        tracking.ROI_SOURCE: data.mask_source,
        "git_commit": (commit := tracking.git_commit()),
        **tracking.source_tags(commit),
        **tracking.environment_tags(),
    }
    experiment_id = tracker.experiment_id(config.name)
    tracker.set_experiment_tags(experiment_id, tracking.experiment_tags(config.search.mode))
    return ExperimentSetup(
        data=data,
        tracker=tracker,
        experiment_id=experiment_id,
        tags=tags,
        notes=notes + list(data.notes),
    )


def selection_note(patience: int) -> str:
    """Return the description of a run that trains a model: which epoch its `sel_*` metrics and
    its test evaluation come from."""
    return (
        "`val_*` are per-epoch validation curves. `sel_val_*` are the validation metrics at "
        "`selected_epoch`: the epoch with the lowest validation loss so far, whose weights are kept "
        f"and evaluated on the test set (`test_*`). Training stops {patience} epochs after it, or at "
        "the epoch budget; `objective` is the sweep's metric at that epoch."
    )


def run_tags(tags: dict[str, str], spec: RunSpec, objective: str) -> dict[str, str]:
    """Return the tags of a run that fits `spec`: the experiment's `tags`, the baseline, fold,
    weights and objective, and the description of what its metrics are."""
    return {
        **tags,
        tracking.BASELINE: spec.baseline,
        tracking.FOLD: str(spec.fold),
        tracking.OBJECTIVE: objective,
        tracking.PRETRAINED: str(spec.pretrained) if spec.pretrained else "none",
        tracking.DESCRIPTION: selection_note(spec.training.patience),
    }


def epoch_metrics(report: EpochReport, objective: str) -> dict[str, float]:
    """Return the flat metrics of one epoch: train loss, val_*, sel_val_*, selected_epoch, objective."""
    metrics = {"train_loss": report.train_loss, "selected_epoch": float(report.best_epoch)}
    for name in METRIC_NAMES:
        metrics[f"val_{name}"] = report.val[name]
        metrics[f"sel_val_{name}"] = report.best_val[name]
    metrics["objective"] = report.best_val[objective.removeprefix("val_")]
    return metrics


def log_epoch(
    tracker: tracking.Tracker,
    run_id: str,
    report: EpochReport,
    *,
    objective: str,
    class_names: tuple[str, ...],
    log_metrics: bool = True,
    extra: dict[str, float] | None = None,
    before_resend: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Log one epoch to a run (with `extra` metrics at its step), and on the last the best epoch's
    validation predictions and the test evaluation; returns the epoch's metrics.
    `log_metrics=False` uploads the evaluations only (a resumed trial repeating an epoch its run
    holds already); `before_resend` is called before metrics are sent again after the server did
    not answer (Tracker.log_metrics)."""
    metrics = epoch_metrics(report, objective)
    logged: dict[int, dict[str, float]] = {report.epoch: metrics | (extra or {})}
    if report.epoch == 1 and log_metrics:
        tracker.set_tags(run_id, {f"{tracking.PARAM_COUNT_PREFIX}{k}": str(v) for k, v in report.param_counts.items()})
    if report.best_val_evaluation is not None:
        best = report.best_val_evaluation.metrics
        logged.setdefault(report.best_epoch, {}).update(
            {f"sel_val_{k}": v for k, v in best.items() if k.startswith("miou")}
        )
        tracker.log_evaluation(run_id, "val", report.best_val_evaluation, class_names)
    if report.test is not None:
        logged.setdefault(report.best_epoch, {}).update({f"test_{k}": v for k, v in report.test.metrics.items()})
        tracker.log_evaluation(run_id, "test", report.test, class_names)
    if log_metrics:
        for step, values in sorted(logged.items()):
            tracker.log_metrics(run_id, values, step=step, before_resend=before_resend)
    return metrics


def _floor_metrics(val: Evaluation, test: Evaluation | None, objective: str) -> dict[str, float]:
    metrics = {f"sel_val_{k}": v for k, v in val.metrics.items() if k in METRIC_NAMES}
    metrics |= {"selected_epoch": 1.0, "objective": val.metrics[objective.removeprefix("val_")]}
    return metrics | ({f"test_{k}": v for k, v in test.metrics.items()} if test is not None else {})


def log_floor_fold(
    tracker: tracking.Tracker, run_id: str, fold: FloorFold, objective: str, class_names: tuple[str, ...]
) -> None:
    """Log one floor fold model's metrics and predictions (validation, and test if any) to `run_id`,
    under the names a trained model's run uses."""
    tracker.log_metrics(run_id, _floor_metrics(fold.val, fold.test, objective), step=1)
    tracker.log_evaluation(run_id, "val", fold.val, class_names)
    if fold.test is not None:
        tracker.log_evaluation(run_id, "test", fold.test, class_names)


def train_tracked(
    config: ExperimentConfig,
    setup: ExperimentSetup,
    spec: RunSpec,
    on_epoch: Callable[[EpochReport], None] | None = None,
    *,
    parent: str | None = None,
    run_type: tracking.RunType = tracking.RunType.TRAIN,
    name: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, FitResult]:
    """Fit one RunSpec as an MLflow run of `run_type` named `name` (default `<baseline> fold <k>`),
    nested under `parent` if given; returns its run id and result."""
    with setup.tracker.run(
        setup.experiment_id,
        name=name or tracking.fold_name(spec.baseline, spec.fold),
        run_type=run_type,
        parent=parent,
        tags=run_tags(setup.tags, spec, config.search.metric) | (tags or {}),
        params=spec.logged_params(),
    ) as run_id:

        def report(entry: EpochReport) -> None:
            log_epoch(setup.tracker, run_id, entry, objective=config.search.metric, class_names=setup.data.class_names)
            if on_epoch is not None:
                on_epoch(entry)

        result = fit(spec, report)
    return run_id, result
