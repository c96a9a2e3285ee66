"""The one way a fold ensemble is logged, for a winner's retrained folds and a floor's folds alike."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness import tracking
from harness.evaluation import Evaluation, fold_ensemble


def log_fold_ensemble(
    tracker: tracking.Tracker,
    experiment_id: str,
    *,
    baseline: str,
    parent: str,
    folds: dict[int, tuple[str, pd.DataFrame]],
    tags: dict[str, str],
    class_names: tuple[str, ...],
) -> tuple[str, Evaluation]:
    """Log the mean softmax of the fold models (fold -> its run id and test predictions) as one
    ensemble run under `parent`, and the ensemble's and the folds' test accuracy on `parent`;
    returns the ensemble run's id and evaluation."""
    evaluation = fold_ensemble([folds[k][1] for k in sorted(folds)])
    single = [float((p.pred == p.label).mean()) for _, p in folds.values()]
    with tracker.run(
        experiment_id,
        name=f"{baseline} ensemble",
        run_type=tracking.RunType.ENSEMBLE,
        parent=parent,
        tags={**tags, tracking.BASELINE: baseline, "fold_run_ids": ",".join(folds[k][0] for k in sorted(folds))},
        params={"folds": len(folds), "combination": "mean_softmax"},
    ) as run_id:
        tracker.log_metrics(run_id, {f"test_{k}": v for k, v in evaluation.metrics.items()}, step=0)
        tracker.log_evaluation(run_id, "test", evaluation, class_names)
    summary = {
        "ensemble_test_accuracy": evaluation.metrics["accuracy"],
        "ensemble_test_auc": evaluation.metrics["auc"],
        "folds_mean_test_accuracy": float(np.mean(single)),
        "folds_std_test_accuracy": float(np.std(single)),
    }
    tracker.log_metrics(parent, summary, step=0)
    return run_id, evaluation
