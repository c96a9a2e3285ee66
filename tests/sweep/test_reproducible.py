"""`search.reproducible: true`: two sweeps with the same seed write the same leaderboard, one run
with trials one at a time and the other with two at once (so trials finish in other orders)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.environment import EMBEDDED_RAY, environment
from harness.sweep._search import optuna_storage
from harness.sweep._studies import mlflow_disagreements
from tests.conftest import experiment_dict, write_experiment

# Two sweeps whose trials wait at every rung, each pause a new trial process: make test-cluster.
pytestmark = pytest.mark.e2e

# Columns that legitimately differ between two sweeps: run ids, and the device hours wall time costs.
RUN_SPECIFIC = ("best_run_id", "gpu_hours", "cpu_hours")


def _sweep(tmp: Path, data_root: Path, cpus: int) -> tuple[pd.DataFrame, list]:
    data = experiment_dict(
        data_root,
        tmp / "results",
        name="repro",
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 16, "epochs_max": 2}}],
        search={
            "trials": 4,
            "max_epochs": 2,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent": 4,
            "reproducible": True,
            "seed": 0,
            "retrain": "none",
        },
        floors=[],
    )
    tmp.mkdir()
    path = write_experiment(tmp / "repro.yaml", data)
    # The sweep joins this Ray instead of starting its own, so the two sweeps differ in parallelism
    # ("local": a new instance, never another Ray that happens to run on this machine; the
    # session's shared one is ended first).
    ray.shutdown()
    with environment(EMBEDDED_RAY):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, configure_logging=False)
    try:
        result = CliRunner().invoke(app, ["sweep", str(path)], catch_exceptions=False)
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    board = CliRunner().invoke(app, ["leaderboard", str(path)], catch_exceptions=False)
    assert board.exit_code == 0, board.output
    client = MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("repro")
    trials = client.search_runs([experiment.experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")
    return pd.read_csv(tmp / "results" / "repro" / "summary.csv"), trials


def test_two_reproducible_sweeps_write_the_same_table(tmp_path: Path, synthetic_idc: Path) -> None:
    """The summary tables agree in every column except run ids and GPU/CPU hours (wall time x share)."""
    one, one_trials = _sweep(tmp_path / "one", synthetic_idc, cpus=1)
    two, two_trials = _sweep(tmp_path / "two", synthetic_idc, cpus=2)
    halved = [r for r in one_trials if r.data.tags.get(tracking.STOPPED_BY) == "halving"]
    assert len(halved) == 2, "the first rung should stop half of the 4 trials"

    def points(trials: list) -> list[tuple]:
        return sorted(
            (r.data.params["lr"], r.data.params["batch_size"], r.info.status, r.data.metrics["objective"])
            for r in trials
        )

    assert points(one_trials) == points(two_trials)
    compared = [c for c in one.columns if c not in RUN_SPECIFIC]
    assert len(compared) > 10
    pd.testing.assert_frame_equal(one[compared], two[compared])
    _assert_optuna_times_are_the_runs(tmp_path / "one" / "results", one_trials)


def _assert_optuna_times_are_the_runs(results: Path, trials: list) -> None:
    """All four points were suggested at once, then the trials ran one at a time (one CPU) and two
    were halved at the first rung: each Optuna trial starts and ends with its MLflow run, which
    optuna-dashboard's timeline shows. Checked as the order of events on one CPU, not as durations."""
    storage = f"sqlite:///{results / 'optuna.db'}"
    assert mlflow_disagreements(storage, f"sqlite:///{results / 'mlflow.db'}", "repro") == (len(trials), [])
    (name,) = optuna.get_all_study_names(optuna_storage(storage))
    optuna_trials = optuna.load_study(study_name=name, storage=optuna_storage(storage)).trials
    clock = {t.user_attrs["mlflow_run_id"]: t for t in optuna_trials}
    runs = sorted(trials, key=lambda r: r.info.start_time)
    for before, after in zip(runs, runs[1:]):
        # The later trial started only once the earlier one, having opened its run, let go of the CPU.
        assert clock[after.info.run_id].datetime_start.timestamp() > before.info.start_time / 1000
    halved = [clock[r.info.run_id] for r in trials if r.data.tags.get(tracking.STOPPED_BY) == "halving"]
    finished = [r for r in trials if r.data.tags[tracking.OUTCOME] == "completed"]
    # Halved trials ended at the rung, before the others trained their second epoch.
    assert max(t.datetime_complete.timestamp() for t in halved) < min(r.info.end_time / 1000 for r in finished)
