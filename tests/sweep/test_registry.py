"""A winner whose fold runs carry no logged model: its ensemble is logged, nothing is registered,
and the sweep says why instead of failing after the whole search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from harness import tracking
from harness.config import load_experiment
from harness.data.prepare import PreparedData
from harness.evaluation import evaluation_of
from harness.sweep._retrain import _log_ensemble
from harness.sweep._trial import SweepContext
from harness.sweep._winners import Winner

from ..conftest import experiment_dict, write_experiment


def _predictions(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    prob = rng.dirichlet([1.0, 1.0], size=6)
    frame = pd.DataFrame({"rel_path": [f"p{i}.png" for i in range(6)], "patient_id": list("aabbcc")})
    frame["label"] = [0, 1, 0, 1, 0, 1]
    return evaluation_of(prob, frame.label.to_numpy().copy(), frame).predictions


def test_folds_without_logged_models_leave_the_winner_unregistered_with_a_note(tmp_path: Path) -> None:
    config = load_experiment(write_experiment(tmp_path / "e.yaml", experiment_dict(tmp_path, tmp_path / "results")))
    tracker = tracking.open_store(config.resolved_tracking_uri())
    experiment_id = tracker.experiment_id(config.name)
    runs = {"tags": {}, "params": {}}
    parent = tracker.start_run(experiment_id, name="sweep", run_type=tracking.RunType.SWEEP, **runs)
    trial = tracker.start_run(experiment_id, name="trial", run_type=tracking.RunType.TRIAL, parent=parent, **runs)
    # Fold runs as a sweep made them before models were logged: no MODEL_URI tag.
    folds = {}
    for fold in range(config.protocol.folds):
        run = tracker.start_run(
            experiment_id, name=f"fold {fold}", run_type=tracking.RunType.FOLD, parent=trial, **runs
        )
        tracker.finish(run, tracking.FINISHED)
        folds[fold] = (run, _predictions(fold))
    unused = tmp_path / "never-read"
    data = PreparedData(unused, "m", unused, "s", unused, None, "none", ("non_idc", "idc"), 18, 6)
    ctx = SweepContext(
        config=config,
        data=data,
        data_dir=unused,
        tracking_uri=tracker.uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        tags={tracking.SPLIT_HASH: "s", tracking.DATASET: "idc"},
        granted={},
    )
    outcome = _log_ensemble(ctx, Winner("cancernet", "t0", trial, {"lr": 0.001}, 0.5), folds)
    assert outcome.registered is None
    assert outcome.note == (
        "cancernet: fold(s) [0, 1, 2] have no logged model (trained before models were logged); none registered"
    )
    ensemble = MlflowClient(tracker.uri).get_run(outcome.ensemble_run_id)
    assert ensemble.info.status == "FINISHED" and "test_accuracy" in ensemble.data.metrics
    assert MlflowClient(tracker.uri).search_registered_models() == []
