"""A winner's registered versions: two served models (the search fold's and the ensemble's) over
the fold runs' torch programs; and a winner whose fold runs carry no logged model: its ensemble is
logged, nothing is registered, and the sweep says why instead of failing after the whole search."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import baselines
from harness import tracking
from harness.config import ExperimentConfig, TrainParams, load_experiment
from harness.data.cache import open_patch_cache
from harness.data.prepare import PreparedData, load_or_index, prepare
from harness.data.splits import TEST, read_split
from harness.evaluation import evaluation_of
from harness.model_registry import TORCH_MODEL_URI, log_fold_model
from harness.served_model import (
    ClassProbabilities,
    InputMismatch,
    InputRecipe,
    ServedFold,
    probabilities,
    torch_threads,
)
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


def _context(config: ExperimentConfig, tracker: tracking.Tracker, data: PreparedData, parent: str) -> SweepContext:
    return SweepContext(
        config=config,
        data=data,
        data_dir=data.cache_path.parent,
        tracking_uri=tracker.uri,
        experiment_id=str(tracker.experiment_id(config.name)),
        parent_run_id=parent,
        tags={tracking.SPLIT_HASH: data.split_hash, tracking.DATASET: "idc"},
        granted={},
    )


@pytest.mark.e2e
def test_a_winners_two_versions_are_served_models_over_its_fold_programs(
    tmp_path: Path, synthetic_idc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_experiment(write_experiment(tmp_path / "e.yaml", experiment_dict(synthetic_idc, tmp_path / "out")))
    data = prepare(load_or_index(config.dataset)[0], config.dataset, config.protocol, config.output_dir / "_data")
    tracker = tracking.open_store(config.resolved_tracking_uri())
    experiment_id = str(tracker.experiment_id(config.name))
    runs = {"tags": {}, "params": {}}
    parent = tracker.start_run(experiment_id, name="sweep", run_type=tracking.RunType.SWEEP, **runs)
    trial = tracker.start_run(experiment_id, name="trial", run_type=tracking.RunType.TRIAL, parent=parent, **runs)
    params = TrainParams(input_size=48, batch_size=2)
    recipe = InputRecipe(
        params=params, stored_hw=(50, 50), bags=False, keras=False, batch_size=2, threads=1, pads_edges=True
    )
    images = np.asarray(open_patch_cache(data.cache_path)[read_split(data.split_path).rows(split=TEST)])
    folds, modules = {}, []
    for fold in range(config.protocol.folds):
        run = tracker.start_run(
            experiment_id, name=f"fold {fold}", run_type=tracking.RunType.FOLD, parent=trial, **runs
        )
        modules.append(ClassProbabilities(baselines.create("cancernet", num_classes=2), params.normalisation).eval())
        log_fold_model(tracker.uri, run, ServedFold(modules[-1], recipe, images[:2], recipe.model_inputs(images[:2])))
        tracker.finish(run, tracking.FINISHED)
        folds[fold] = (run, _predictions(fold))
    ctx = _context(config, tracker, data, parent)
    outcome = _log_ensemble(ctx, Winner("cancernet", "t0", trial, {"lr": 0.001}, 0.5), folds)
    assert (outcome.registered, outcome.note) == ("t-cancernet", None)
    client = MlflowClient(tracker.uri)
    winner, ensemble = (client.get_model_version_by_alias("t-cancernet", a) for a in ("winner", "ensemble"))
    assert (winner.run_id, ensemble.run_id) == (folds[0][0], outcome.ensemble_run_id)
    assert winner.tags["classes"] == "non_idc,idc" and ensemble.tags["folds"] == "0,1,2"
    with torch_threads(recipe.threads):
        expected = [probabilities(m, recipe.dataset(images), recipe.batch_size) for m in modules]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    served = {a: mlflow.pyfunc.load_model(f"models:/t-cancernet@{a}") for a in ("winner", "ensemble")}
    # Raw torch programs are the fold runs' own models, not a registered entry point.
    assert set(mlflow.models.get_model_info(winner.source).flavors) == {"python_function"}
    assert TORCH_MODEL_URI in client.get_run(folds[0][0]).data.tags
    assert np.array_equal(served["winner"].predict(images)[["non_idc", "idc"]].to_numpy(), expected[0])
    mean = np.mean(np.stack(expected), axis=0)
    assert np.array_equal(served["ensemble"].predict(images)[["non_idc", "idc"]].to_numpy(), mean)
    with pytest.raises(InputMismatch, match=r"got uint8 array of shape \(1, 50, 60, 3\)$"):
        served["winner"].predict(np.zeros((1, 50, 60, 3), np.uint8))


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
    ctx = _context(config, tracker, data, parent)
    outcome = _log_ensemble(ctx, Winner("cancernet", "t0", trial, {"lr": 0.001}, 0.5), folds)
    assert outcome.registered is None
    assert outcome.note == (
        "cancernet: fold(s) [0, 1, 2] have no logged model (trained before models were logged); none registered"
    )
    ensemble = MlflowClient(tracker.uri).get_run(outcome.ensemble_run_id)
    assert ensemble.info.status == "FINISHED" and "test_accuracy" in ensemble.data.metrics
    assert MlflowClient(tracker.uri).search_registered_models() == []
