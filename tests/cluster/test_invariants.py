"""The fault tests' shared checks (tests/cluster/invariants.py) on stores written by hand: an intact
trial passes, and each fault it must catch is named by run and step."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from harness import tracking
from harness.sweep._search import MLFLOW_RUN_ATTR, RAY_TRIAL_ATTR, optuna_storage
from harness.sweep._trial import CHECKPOINT_MB
from tests.cluster.invariants import PER_EPOCH, assert_sweep_intact


class Stores:
    """An MLflow SQLite store and an Optuna storage holding one sweep's trials, written by hand:
    one experiment per test in stores shared by the module (creating a store takes seconds)."""

    def __init__(self, folder: Path, experiment: str) -> None:
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.storage = f"sqlite:///{folder / 'optuna.db'}"
        self.experiment = experiment
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment(experiment, artifact_location=str(folder / experiment))
        self.study = optuna.create_study(study_name=f"{experiment}/s1/cancernet", storage=optuna_storage(self.storage))

    def trial(self, trial_id: str, epochs: int) -> str:
        """Add one completed trial of `epochs` epochs to both stores; returns its run id."""
        asked = self.study.ask()
        run = self.client.create_run(
            self.experiment_id,
            tags={
                tracking.RUN_TYPE: tracking.RunType.TRIAL,
                tracking.BASELINE: "cancernet",
                tracking.TRIAL_ID: trial_id,
                tracking.OPTUNA_TRIAL: str(asked.number),
                tracking.OUTCOME: "completed",
            },
        )
        asked.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        asked.set_user_attr(MLFLOW_RUN_ATTR, run.info.run_id)
        for epoch in range(1, epochs + 1):
            self.log(run.info.run_id, epoch, 0.5 + epoch / 100)
            asked.report(0.5 + epoch / 100, epoch)
        self.client.set_terminated(run.info.run_id, tracking.FINISHED)
        self.study.tell(asked, 0.5 + epochs / 100)
        return run.info.run_id

    def log(self, run_id: str, step: int, value: float) -> None:
        for key in PER_EPOCH:
            self.client.log_metric(run_id, key, value if key == "objective" else 0.0, step=step)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stores")


@pytest.fixture
def stores(folder: Path, request: pytest.FixtureRequest) -> Stores:
    return Stores(folder, request.node.name)


def _faults(stores: Stores, **kwargs) -> str:
    with pytest.raises(AssertionError) as failed:
        assert_sweep_intact(stores.uri, stores.experiment, stores.storage, **kwargs)
    return str(failed.value)


def test_an_intact_sweep_passes(stores: Stores) -> None:
    stores.trial("t1", 3)
    stores.trial("t2", 2)
    assert_sweep_intact(stores.uri, stores.experiment, stores.storage, trials=2)


def test_a_step_logged_twice_is_named_by_run_and_step(stores: Stores) -> None:
    run_id = stores.trial("t1", 3)
    stores.client.log_metric(run_id, CHECKPOINT_MB, 0.0, step=2)
    assert f"{CHECKPOINT_MB} logged twice at step(s) [2]" in _faults(stores)


def test_a_gap_in_the_series_and_a_run_left_running_are_named(stores: Stores) -> None:
    run_id = stores.trial("t1", 2)
    stores.log(run_id, 4, 0.6)
    stores.client.update_run(run_id, status="RUNNING")
    faults = _faults(stores)
    assert "objective at steps [1, 2, 4], not 1..3" in faults and "status RUNNING, not terminal" in faults


def test_a_trial_counted_twice_and_a_run_optuna_does_not_know_are_named(stores: Stores) -> None:
    stores.trial("t1", 2)
    stray = stores.client.create_run(
        stores.experiment_id,
        tags={tracking.RUN_TYPE: tracking.RunType.TRIAL, tracking.BASELINE: "cancernet", tracking.TRIAL_ID: "t1"},
    )
    stores.client.set_terminated(stray.info.run_id, tracking.FINISHED)
    faults = _faults(stores, trials=1)
    assert f"{tracking.TRIAL_ID} t1 (cancernet): 2 runs" in faults
    assert "2 trial runs in MLflow, 1 trials in the Optuna studies" in faults
