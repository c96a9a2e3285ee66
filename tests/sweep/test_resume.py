"""A sweep whose driver is SIGKILLed mid-trial, then resumed with `harness sweep --resume`."""

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
from tests.conftest import REPO, experiment_dict, write_experiment

pytestmark = pytest.mark.cluster

TRIALS = 4


def _trial_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")


def _saved_by_tune(storage: Path, runs: list) -> bool:
    """Return True when Tune's saved experiment state names every one of `runs`' trials."""
    try:
        saved = _trial_ids_in_tune_state(storage)
    except (ValueError, OSError, json.JSONDecodeError):  # none saved yet, or one being replaced
        return False
    return all(r.data.tags[tracking.TRIAL_ID] in saved for r in runs)


def _wait_for_a_finished_and_a_training_trial(client: MlflowClient, driver: subprocess.Popen, storage: Path) -> list:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            runs = _trial_runs(client, "resume")
        except Exception:  # the driver may hold the SQLite lock for a moment
            runs = []
        finished = [r for r in runs if r.info.status == "FINISHED"]
        # Two epochs in: Tune has saved its experiment state (every 2 s) since this trial started.
        training = [
            r
            for r in runs
            if r.info.status == "RUNNING" and len(client.get_metric_history(r.info.run_id, "val_loss")) >= 2
        ]
        # Both named in Tune's saved state, so what the resume reads holds them (it saves every 2 s).
        if finished and training and _saved_by_tune(storage, [*finished, *training]):
            return runs
        time.sleep(0.2)
    pytest.fail(f"the sweep never had a finished and a training trial at once (driver exit {driver.poll()})")


def _trial_ids_in_tune_state(storage: Path) -> set[str]:
    state = max(storage.glob("sweep-*/experiment_state-*.json"))
    trials = json.loads(state.read_text())["trial_data"]
    return {json.loads(trial)["trial_id"] for trial, _ in trials}


def test_a_killed_sweep_resumes_without_rerunning_or_duplicating(tmp_path: Path, synthetic_idc: Path) -> None:
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "results",
        name="resume",
        baselines=[{"name": "cancernet", "fixed": {"epochs_max": 5, "batch_size": 8}}],
        search={
            "trials": TRIALS,
            "max_epochs": 5,
            "grace_period": 5,
            "sampler": "random",
            "max_concurrent": 1,
            "retrain": "none",
        },
    )
    path = write_experiment(tmp_path / "resume.yaml", data)
    command = [sys.executable, "-m", "harness", "sweep", str(path)]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        before = _wait_for_a_finished_and_a_training_trial(client, driver, tmp_path / "results" / "resume" / "ray")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
    interrupted = next(r.info.run_id for r in before if r.info.status == "RUNNING")
    # Ray's reaper ends the embedded cluster once its driver is gone; give it a moment, then make sure.
    time.sleep(5)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout

    runs = _trial_runs(client, "resume")
    trial_ids = [r.data.tags[tracking.TRIAL_ID] for r in runs]
    assert len(runs) == TRIALS and len(set(trial_ids)) == TRIALS, [
        (
            r.data.tags[tracking.TRIAL_ID],
            r.info.status,
            r.data.tags.get(tracking.ATTEMPTS),
            r.info.run_id in finished_before,
            _trial_ids_in_tune_state(tmp_path / "results" / "resume" / "ray"),
        )
        for r in runs
    ]
    assert set(trial_ids) == _trial_ids_in_tune_state(tmp_path / "results" / "resume" / "ray")
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.data.tags[tracking.TRIAL_ID], r.info.status, r.data.tags.get(tracking.ERROR, "")[:300]) for r in runs
    ]
    after = {r.info.run_id: r for r in runs}
    for run_id, end_time in finished_before.items():
        # Not rerun: same run, same end, one attempt.
        assert after[run_id].info.end_time == end_time
        assert after[run_id].data.tags[tracking.ATTEMPTS] == "1"
    assert after[interrupted].data.tags[tracking.ATTEMPTS] == "2"
    found = client.get_experiment_by_name("resume")
    sweeps = client.search_runs([found.experiment_id], f"tags.{tracking.RUN_TYPE} = 'sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED" and "resumed_at" in sweeps[0].data.tags
    epochs = [m.step for m in client.get_metric_history(interrupted, "train_loss")]
    assert sorted(set(epochs)) == list(range(1, max(epochs) + 1))
    print(
        f"\nresume: killed with {len(finished_before)} trial(s) finished and 1 training; after --resume "
        f"{len(runs)} trial runs for {len(set(trial_ids))} Tune trials, all FINISHED, one sweep run"
    )
