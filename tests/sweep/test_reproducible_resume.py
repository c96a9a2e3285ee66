"""A reproducible sweep (synchronous halving) whose driver is SIGKILLed while trials wait at a rung,
then resumed with `harness sweep --resume`: the resumed sweep halves on the rung's results, as the
uninterrupted one would have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import tracking
from harness.sweep._studies import mlflow_disagreements
from tests.conftest import REPO, experiment_dict, write_experiment

# Two sweep processes (the first killed), each starting its own Ray: make test-cluster.
pytestmark = pytest.mark.e2e

TRIALS = 4


def _saved_trials(storage: Path) -> list[tuple[str, str, dict]]:
    """Return each trial of the Tune state saved last: its id, status and last result."""
    states = sorted(storage.glob("sweep-*/experiment_state-*.json"))
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())["trial_data"]
    except (ValueError, KeyError):  # being written
        return []
    trials = []
    for trial, runtime in data:
        trial, runtime = json.loads(trial), json.loads(runtime)
        trials.append((trial["trial_id"], trial["status"], runtime.get("last_result") or {}))
    return trials


def _kill_while_a_trial_waits_at_the_rung(driver: subprocess.Popen, storage: Path) -> list[tuple[str, str, dict]]:
    """Wait until Tune's saved state has a trial PAUSED at the first rung and one yet to report,
    then SIGKILL the driver and its Ray; returns that state."""
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            saved = _saved_trials(storage)
            paused = [t for t in saved if t[1] == "PAUSED"]
            unreported = [t for t in saved if "objective" not in t[2]]
            if len(saved) == TRIALS and paused and unreported:
                return saved
            time.sleep(0.1)
        pytest.fail(f"no saved state with a trial waiting at the rung (driver exit {driver.poll()})")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def _objectives(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "objective"))


def test_a_resumed_reproducible_sweep_halves_on_the_rungs_results(tmp_path: Path, synthetic_idc: Path) -> None:
    results = tmp_path / "results"
    data = experiment_dict(
        synthetic_idc,
        results,
        name="reprores",
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 16, "epochs_max": 2}}],
        search={
            "trials": TRIALS,
            "max_epochs": 2,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent": TRIALS,
            "reproducible": True,
            "seed": 0,
            "metric": "val_loss",
            "retrain": "none",
        },
        floors=[],
    )
    path = write_experiment(tmp_path / "reprores.yaml", data)
    command = [sys.executable, "-m", "harness", "sweep", str(path)]
    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        saved = _kill_while_a_trial_waits_at_the_rung(driver, results / "reprores" / "ray")
    waiting = {trial_id for trial_id, status, _ in saved if status == "PAUSED"}

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reprores")
    runs = client.search_runs([experiment.experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")
    assert sorted(r.data.tags[tracking.TRIAL_ID] for r in runs) == sorted(t[0] for t in saved)
    assert all(r.info.status == tracking.FINISHED for r in runs), [(r.info.status, r.data.tags) for r in runs]
    series = {r.info.run_id: _objectives(client, r.info.run_id) for r in runs}
    for run in runs:
        steps = [step for step, _ in series[run.info.run_id]]
        assert steps == list(range(1, len(steps) + 1)), (run.data.tags[tracking.TRIAL_ID], steps)
    # The rung keeps the better half by the objective at epoch 1 (lowest loss; a tie keeps the
    # later suggestion), as the uninterrupted sweep does; the trials that waited there never
    # trained past it unjudged.
    at_rung = sorted(runs, key=lambda r: (-series[r.info.run_id][0][1], int(r.data.tags[tracking.OPTUNA_TRIAL])))
    halved = {r.info.run_id for r in runs if r.data.tags.get(tracking.STOPPED_BY) == "halving"}
    assert halved == {r.info.run_id for r in at_rung[: TRIALS // 2]}, [
        (r.data.tags[tracking.TRIAL_ID], series[r.info.run_id], r.data.tags.get(tracking.STOPPED_BY)) for r in at_rung
    ] + [(trial_id, status, result.get("objective")) for trial_id, status, result in saved]
    for run in runs:
        assert len(series[run.info.run_id]) == (1 if run.info.run_id in halved else 2)
    held = [r for r in runs if r.data.tags[tracking.TRIAL_ID] in waiting]
    assert held and all(r.data.tags[tracking.ATTEMPTS] == "1" for r in held)
    compared, lines = mlflow_disagreements(f"sqlite:///{results / 'optuna.db'}", client.tracking_uri, "reprores")
    assert compared == TRIALS and [line for line in lines if ": start:" not in line and ": end:" not in line] == []
