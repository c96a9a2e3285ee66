"""A winner's models in the Model Registry: after its fold ensemble is logged, two served models
(pyfunc models on stored images, under the class names), the search fold's network (the winning
trial trained again) on its fold run and the mean of every fold's on the ensemble run, registered
as versions of `<experiment>-<baseline>`, tagged with the split, the sweep and their test metrics."""

from __future__ import annotations

import numpy as np

from harness import tracking
from harness.data.cache import open_patch_cache
from harness.data.splits import TEST, read_split
from harness.model_registry import (
    ENSEMBLE,
    TORCH_MODEL_URI,
    WINNER,
    log_served_model,
    register,
    registered_name,
)

from ._trial import SweepContext
from ._winners import Winner

EXAMPLES = 2  # stored test images saved as the served models' input example
STORED = "uint8 RGB images as the harness stores them (N x H x W x 3, smaller edge patches padded)"


def _metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.6g}" for k, v in sorted(metrics.items()) if k.startswith("test_")}


def register_winner(
    ctx: SweepContext, winner: Winner, folds: dict[int, str], ensemble_run_id: str, ensemble_metrics: dict[str, float]
) -> tuple[str | None, str | None]:
    """Log the served models over the fold runs' torch programs (fold -> run id): the search fold's
    on its run, the mean of all on the ensemble run; register both; returns (the registered name,
    None), or (None, why not) when a fold has no torch program."""
    baseline, data, search_fold = winner.baseline, ctx.data, ctx.config.protocol.search_fold
    tracker = tracking.tracker_for(ctx.tracking_uri)
    fold_runs = {k: tracker.client.get_run(run_id) for k, run_id in folds.items()}
    missing = sorted(k for k, run in fold_runs.items() if TORCH_MODEL_URI not in run.data.tags)
    if missing or search_fold not in fold_runs:
        return None, (
            f"{baseline}: fold(s) {missing} have no logged model (trained before models were logged); none registered"
        )
    models = {k: run.data.tags[TORCH_MODEL_URI] for k, run in fold_runs.items()}
    examples = np.asarray(open_patch_cache(data.cache_path)[read_split(data.split_path).rows(split=TEST)[:EXAMPLES]])
    searched = fold_runs[search_fold]
    winner_uri = log_served_model(
        ctx.tracking_uri, searched.info.run_id, {search_fold: models[search_fold]}, examples, data.class_names
    )
    ensemble_uri = log_served_model(ctx.tracking_uri, ensemble_run_id, models, examples, data.class_names)
    experiment = tracker.client.get_experiment(ctx.experiment_id).name
    common = {
        tracking.SPLIT_HASH: ctx.tags[tracking.SPLIT_HASH],
        tracking.DATASET: ctx.tags[tracking.DATASET],
        tracking.BASELINE: baseline,
        "experiment": experiment,
        "sweep_run_id": ctx.parent_run_id,
        tracking.WINNER: winner.trial_id,
        "winner_run_id": winner.run_id,
        tracking.OBJECTIVE: ctx.objective,
        "objective": f"{winner.objective:.6g}",
        "classes": ",".join(data.class_names),
    }
    name = registered_name(experiment, baseline)
    register(
        ctx.tracking_uri,
        name,
        winner_uri,
        alias=WINNER,
        tags={**common, "kind": "fold_model", tracking.FOLD: str(search_fold), **_metric_tags(searched.data.metrics)},
        description=(
            f"The winning trial {winner.trial_id} trained again on its search fold {search_fold} (run "
            f"{searched.info.run_id}) within {searched.data.params.get('epochs', '?')} epochs. "
            f"`mlflow.pyfunc.load_model(...).predict(images)` on {STORED} returns probabilities under the "
            "class names and the predicted class; its torch program is the fold run's `torch_model`."
        ),
    )
    register(
        ctx.tracking_uri,
        name,
        ensemble_uri,
        alias=ENSEMBLE,
        tags={
            **common,
            "kind": "fold_ensemble",
            "folds": ",".join(map(str, sorted(models))),
            **_metric_tags(ensemble_metrics),
        },
        description=(
            f"The mean softmax of the winner's {len(models)} fold models (ensemble run {ensemble_run_id}). "
            f"`mlflow.pyfunc.load_model(...).predict(images)` on {STORED} returns the "
            "probabilities of the run's test/predictions.csv under the class names, and the predicted class."
        ),
    )
    return name, None
