"""After the search: retrain each baseline's winning configuration on every fold, then ensemble the
fold models on the test set by averaging their softmax outputs (as the GuSA paper does).

Each fold is a Ray task with the baseline's trial resources, so folds spread over the cluster; each
logs one MLflow run (run_type=fold) under the winning trial's run, and the ensemble one more
(run_type=ensemble). Folds already FINISHED (a resumed sweep) are read back, not retrained. A fold
task tells the driver each epoch through a Ray queue (a task's prints would reach the driver only
prefixed and merged with similar lines, and Ray Client has no streaming tasks).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Callable

import mlflow
import pandas as pd
import ray
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from harness import tracking
from harness.experiment import log_epoch
from harness.model_registry import log_fold_model
from harness.train import EpochReport, served_fold

from ._ensemble import log_fold_ensemble
from ._nodes import current_node, device_placement
from ._registry import register_winner
from ._trial import SweepContext, fit_on_node, node_spec
from ._winners import Winner

PREDICTIONS = "test/predictions.csv"
RunType = tracking.RunType
# A fold's run id and its model's test predictions.
FoldOutcome = tuple[str, pd.DataFrame]
# How often the driver, waiting for fold tasks, prints the epochs they reported.
PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class FoldEpoch:
    """One epoch of a winner's retrain on a fold, as its task reports it to the driver: the
    validation loss and the sweep's metric at that epoch, and the fold's epoch budget."""

    baseline: str
    fold: int
    epoch: int
    budget: int
    val_loss: float
    metric: str
    value: float


@dataclass
class EnsembleOutcome:
    """Test accuracy of each fold model and of their softmax average, with the ensemble's run."""

    baseline: str
    fold_accuracy: dict[int, float]
    ensemble_accuracy: float
    ensemble_run_id: str
    registered: str | None = None  # the Model Registry name of its winner and ensemble
    note: str | None = None  # why they were not registered


def _train_fold(ctx: SweepContext, winner: Winner, fold: int, progress: Queue | None) -> FoldOutcome:
    """Fit the winner's point on `fold` within the retrain's epoch cap as one MLflow run, putting a
    FoldEpoch on `progress` after each epoch; returns the run id and test predictions."""
    node = current_node()
    placement = device_placement(ctx.config.training.device, node)
    spec = node_spec(ctx, winner.baseline, winner.point, fold, node, placement.device)
    spec = spec.model_copy(update={"max_epochs": ctx.config.search.retrain_budget})
    tracker = tracking.tracker_for(ctx.tracking_uri)
    with tracker.run(
        ctx.experiment_id,
        name=tracking.fold_name(winner.baseline, fold),
        run_type=RunType.FOLD,
        parent=winner.run_id,
        tags={
            **ctx.run_tags(spec),
            tracking.WINNER: winner.trial_id,
            tracking.NODE_ID: node.node_id,
            tracking.NODE_IP: node.ip,
            **placement.tags(),
        },
        params=spec.logged_params(),
    ) as run_id:

        def report(entry: EpochReport) -> None:
            log_epoch(tracker, run_id, entry, objective=ctx.objective, class_names=ctx.data.class_names)
            if progress is not None:
                value = entry.val[ctx.objective.removeprefix("val_")]
                loss = entry.val["loss"]
                progress.put(FoldEpoch(spec.baseline, fold, entry.epoch, spec.epochs, loss, ctx.objective, value))

        result = fit_on_node(spec, ctx.granted[winner.baseline].gpu, report)
        if ctx.config.search.register_models:
            log_fold_model(ctx.tracking_uri, run_id, served_fold(spec, result))
    assert result.test is not None, "retraining needs a test set (protocol.test_fraction > 0)"
    return run_id, result.test.predictions


def _read_predictions(tracking_uri: str, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=PREDICTIONS, dst_path=folder, tracking_uri=tracking_uri
        )
        return pd.read_csv(path)


def _log_ensemble(ctx: SweepContext, winner: Winner, folds: dict[int, FoldOutcome]) -> EnsembleOutcome:
    run_id, evaluation = log_fold_ensemble(
        tracking.tracker_for(ctx.tracking_uri),
        ctx.experiment_id,
        baseline=winner.baseline,
        parent=winner.run_id,
        folds=folds,
        tags={**ctx.tags, tracking.WINNER: winner.trial_id},
        class_names=ctx.data.class_names,
    )
    single = {k: float((p.pred == p.label).mean()) for k, (_, p) in folds.items()}
    registered, note = None, None
    if ctx.config.search.register_models:
        fold_runs = {k: fold_run for k, (fold_run, _) in folds.items()}
        test_metrics = {f"test_{k}": v for k, v in evaluation.metrics.items()}
        registered, note = register_winner(ctx, winner, fold_runs, run_id, test_metrics)
    return EnsembleOutcome(winner.baseline, single, evaluation.metrics["accuracy"], run_id, registered, note)


def _submit_folds(
    ctx: SweepContext, winners: list[Winner], folds: int, progress: Queue | None
) -> tuple[dict[str, dict[int, FoldOutcome]], dict[ray.ObjectRef, tuple[Winner, int]]]:
    """Read back the folds a resumed sweep already trained and submit the others as Ray tasks
    reporting their epochs on `progress`; returns the folds done per baseline and the pending
    tasks. Winners with an ensemble are skipped."""
    tracker = tracking.tracker_for(ctx.tracking_uri)
    done: dict[str, dict[int, FoldOutcome]] = {w.baseline: {} for w in winners}
    pending: dict[ray.ObjectRef, tuple[Winner, int]] = {}
    task = ray.remote(_train_fold)
    for winner in winners:
        if tracker.child_runs(ctx.experiment_id, winner.run_id, RunType.ENSEMBLE):
            continue
        finished = {
            int(r.data.tags[tracking.FOLD]): r.info.run_id
            for r in tracker.child_runs(ctx.experiment_id, winner.run_id, RunType.FOLD)
            if r.info.status == tracking.FINISHED
        }
        granted = ctx.granted[winner.baseline]
        for fold in range(folds):
            if fold in finished:
                done[winner.baseline][fold] = (finished[fold], _read_predictions(ctx.tracking_uri, finished[fold]))
            else:
                on_node = task.options(num_cpus=granted.cpu, num_gpus=granted.gpu, max_retries=0)
                ref = on_node.remote(ctx, winner, fold, progress)
                pending[ref] = (winner, fold)
    return done, pending


def _tell_epochs(progress: Queue | None, on_epoch: Callable[[FoldEpoch], None] | None) -> None:
    """Call `on_epoch` with every FoldEpoch waiting on `progress`, in the order they were put."""
    if progress is None or on_epoch is None:
        return
    # Only this loop takes from the queue: what it counts is there to take.
    for entry in progress.get_nowait_batch(progress.qsize()):
        on_epoch(entry)


def _progress_queue() -> Queue:
    """Return a queue for the fold tasks' epochs: an actor of no CPU (it starts while the folds hold
    every core) on the driver's node (the head's under Ray Client), so a lost worker node takes no
    fold's reports, and no later fold's, with it."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def retrain_winners(
    ctx: SweepContext,
    winners: list[Winner],
    folds: int,
    on_fold: Callable[[str, int, float], None] | None = None,
    on_epoch: Callable[[FoldEpoch], None] | None = None,
) -> tuple[list[EnsembleOutcome], list[str]]:
    """Retrain every winner on every fold as Ray tasks, then log each baseline's ensemble; returns
    one outcome per winner whose folds all trained, and notes on those that did not.
    `on_fold(baseline, fold, test accuracy)` is called as folds finish, `on_epoch` as their epochs do."""
    progress = _progress_queue() if on_epoch is not None else None
    try:
        return _wait_for_folds(ctx, winners, folds, progress, on_fold, on_epoch)
    finally:
        if progress is not None:
            progress.shutdown()


def _wait_for_folds(
    ctx: SweepContext,
    winners: list[Winner],
    folds: int,
    progress: Queue | None,
    on_fold: Callable[[str, int, float], None] | None,
    on_epoch: Callable[[FoldEpoch], None] | None,
) -> tuple[list[EnsembleOutcome], list[str]]:
    """retrain_winners with its progress queue: submit the folds, tell their epochs and ends as
    they come, then log the ensembles."""
    done, pending = _submit_folds(ctx, winners, folds, progress)
    notes: list[str] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_SECONDS if progress else None)
        # A fold's epochs were put before its task returned: they are told before its end.
        _tell_epochs(progress, on_epoch)
        if not ready:
            continue
        winner, fold = pending.pop(ready[0])
        try:
            run_id, predictions = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            notes.append(
                f"{winner.baseline}: fold {fold} retrain failed ({str(exc).strip().splitlines()[-1]}); no ensemble"
            )
            continue
        done[winner.baseline][fold] = (run_id, predictions)
        if on_fold is not None:
            on_fold(winner.baseline, fold, float((predictions.pred == predictions.label).mean()))
    outcomes = [_log_ensemble(ctx, w, done[w.baseline]) for w in winners if len(done[w.baseline]) == folds]
    return outcomes, notes + [o.note for o in outcomes if o.note]
