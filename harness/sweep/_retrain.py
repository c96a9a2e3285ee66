"""After the search: retrain each baseline's winning configuration on every fold, then ensemble the
fold models on the test set by averaging their softmax outputs (as the GuSA paper does).

Each fold is a Ray task with the baseline's trial resources, so folds spread over the cluster; each
logs one MLflow run (run_type=fold) under the winning trial's run, and the ensemble one more
(run_type=ensemble). Folds already FINISHED (a resumed sweep) are read back, not retrained.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
import ray

from harness import tracking
from harness.metrics import classification_metrics, confusion, grouped_accuracies
from harness.nodes import current_node
from harness.train import EpochReport, Evaluation
from harness.trial import SweepContext, fit_on_node, node_spec

PREDICTIONS = "test/predictions.csv"


@dataclass(frozen=True)
class Winner:
    """The best finished trial of one baseline: its Tune id, MLflow run and sampled point."""

    baseline: str
    trial_id: str
    run_id: str
    point: dict[str, Any]


@dataclass
class EnsembleOutcome:
    """Test accuracy of each fold model and of their softmax average, with the ensemble's run."""

    baseline: str
    fold_accuracy: dict[int, float]
    ensemble_accuracy: float
    ensemble_run_id: str


def _train_fold(ctx: SweepContext, winner: Winner, fold: int) -> tuple[str, pd.DataFrame]:
    """Fit the winner's point on `fold` as one MLflow run; returns the run id and test predictions."""
    node = current_node()
    spec = node_spec(ctx, winner.baseline, winner.point, fold, node)
    tracker = tracking.Tracker(ctx.tracking_uri)
    run_id = tracker.start_run(
        ctx.experiment_id,
        name=f"{winner.baseline}-fold{fold}",
        parent=winner.run_id,
        tags={
            **ctx.tags,
            tracking.RUN_TYPE: "fold",
            tracking.BASELINE: winner.baseline,
            tracking.FOLD: str(fold),
            tracking.WINNER: winner.trial_id,
            tracking.OBJECTIVE: ctx.objective,
            tracking.PRETRAINED: str(spec.pretrained or "none"),
            tracking.NODE_ID: node.node_id,
            tracking.NODE_IP: node.ip,
            **ctx.plans[winner.baseline].resource_tags(),
        },
        params={**ctx.plans[winner.baseline].fixed, **winner.point, "epochs": spec.epochs, **spec.protocol_params},
    )

    def report(entry: EpochReport) -> None:
        tracking.log_epoch(tracker, run_id, entry, objective=ctx.objective, class_names=ctx.class_names)

    with tracker.ending(run_id):
        result = fit_on_node(spec, ctx.plans[winner.baseline].gpu, report)
    assert result.test is not None, "retraining needs a test set (protocol.test_fraction > 0)"
    return run_id, result.test.predictions


def _read_predictions(tracking_uri: str, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=PREDICTIONS, dst_path=folder, tracking_uri=tracking_uri
        )
        return pd.read_csv(path)


def ensemble(predictions: list[pd.DataFrame]) -> Evaluation:
    """Return the evaluation of the mean softmax of fold models over the same test images."""
    first = predictions[0]
    for other in predictions[1:]:
        if not other.rel_path.equals(first.rel_path):
            raise ValueError("fold models were evaluated on different test images")
    prob_columns = [c for c in first.columns if c.startswith("prob_")]
    mean = np.mean([p[prob_columns].to_numpy() for p in predictions], axis=0)
    labels = first.label.to_numpy()
    frame = first.drop(columns=prob_columns + ["pred"]).assign(
        **{c: mean[:, i] for i, c in enumerate(prob_columns)}, pred=mean.argmax(1)
    )
    metrics = {**classification_metrics(labels, mean), **grouped_accuracies(frame)}
    return Evaluation(metrics=metrics, confusion=confusion(labels, mean.argmax(1), mean.shape[1]), predictions=frame)


def _log_ensemble(ctx: SweepContext, winner: Winner, folds: dict[int, tuple[str, pd.DataFrame]]) -> EnsembleOutcome:
    tracker = tracking.Tracker(ctx.tracking_uri)
    evaluation = ensemble([folds[k][1] for k in sorted(folds)])
    single = {k: float((p.pred == p.label).mean()) for k, (_, p) in folds.items()}
    run_id = tracker.start_run(
        ctx.experiment_id,
        name=f"{winner.baseline}-ensemble",
        parent=winner.run_id,
        tags={
            **ctx.tags,
            tracking.RUN_TYPE: "ensemble",
            tracking.BASELINE: winner.baseline,
            tracking.WINNER: winner.trial_id,
            "fold_run_ids": ",".join(folds[k][0] for k in sorted(folds)),
        },
        params={"folds": len(folds), "combination": "mean_softmax"},
    )
    tracker.log_metrics(run_id, {f"test_{k}": v for k, v in evaluation.metrics.items()}, step=0)
    tracker.log_evaluation(run_id, "test", evaluation, ctx.class_names)
    tracker.finish(run_id, tracking.FINISHED)
    tracker.log_metrics(
        winner.run_id,
        {
            "ensemble_test_accuracy": evaluation.metrics["accuracy"],
            "ensemble_test_auc": evaluation.metrics["auc"],
            "folds_mean_test_accuracy": float(np.mean(list(single.values()))),
            "folds_std_test_accuracy": float(np.std(list(single.values()))),
        },
        step=0,
    )
    return EnsembleOutcome(winner.baseline, single, evaluation.metrics["accuracy"], run_id)


def retrain_winners(
    ctx: SweepContext, winners: list[Winner], folds: int, on_fold: Callable[[str, int, float], None] | None = None
) -> tuple[list[EnsembleOutcome], list[str]]:
    """Retrain every winner on every fold as Ray tasks, then log each baseline's ensemble; returns
    one outcome per winner whose folds all trained, and notes on those that did not.
    `on_fold(baseline, fold, test accuracy)` is called as folds finish."""
    tracker = tracking.Tracker(ctx.tracking_uri)
    done: dict[str, dict[int, tuple[str, pd.DataFrame]]] = {w.baseline: {} for w in winners}
    pending: dict[ray.ObjectRef, tuple[Winner, int]] = {}
    task = ray.remote(_train_fold)
    outcomes: list[EnsembleOutcome] = []
    notes: list[str] = []
    for winner in winners:
        if tracker.child_runs(ctx.experiment_id, winner.run_id, "ensemble"):
            continue
        finished = {
            int(r.data.tags[tracking.FOLD]): r.info.run_id
            for r in tracker.child_runs(ctx.experiment_id, winner.run_id, "fold")
            if r.info.status == tracking.FINISHED
        }
        plan = ctx.plans[winner.baseline]
        for fold in range(folds):
            if fold in finished:
                done[winner.baseline][fold] = (finished[fold], _read_predictions(ctx.tracking_uri, finished[fold]))
            else:
                ref = task.options(num_cpus=plan.cpu, num_gpus=plan.gpu, max_retries=0).remote(ctx, winner, fold)
                pending[ref] = (winner, fold)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
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
    for winner in winners:
        if len(done[winner.baseline]) == folds:
            outcomes.append(_log_ensemble(ctx, winner, done[winner.baseline]))
    return outcomes, notes
