"""What every fault test on the namespaced cluster asserts, read back from the stores alone (the
MLflow store and the Optuna storage), whatever the fault was: every run terminal, each trial
counted once, every trial's per-epoch series complete and without a step logged twice, and the
Optuna studies agreeing with MLflow."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import RunStatus, ViewType
from optuna.trial import TrialState

from harness import tracking
from harness.sweep._search import MLFLOW_RUN_ATTR, RAY_TRIAL_ATTR, optuna_storage
from harness.sweep._studies import mlflow_disagreements
from harness.sweep._trial import CHECKPOINT_MB

# The series a trial logs once per epoch it trains, all at the same steps 1..n.
PER_EPOCH = ("objective", "train_loss", "val_loss", "selected_epoch", CHECKPOINT_MB)
TERMINAL = {RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)}
# What mlflow_disagreements says about the order of a trial's times, which holds only for a sweep
# whose driver was never interrupted.
TIME_LINES = ("start:", "end:", "times:")


def _name(run: Any) -> str:
    return f"run {run.info.run_name} ({run.info.run_id[:8]})"


def all_runs(client: MlflowClient, experiment: str) -> list:
    """Return every run of `experiment`, deleted ones included (a fault must not hide a run)."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], run_view_type=ViewType.ALL, max_results=50_000)


def trial_runs(runs: list) -> list:
    """Return the trials' runs among `runs` (floor models stand in trials' places: left out)."""
    return [
        r
        for r in runs
        if r.data.tags.get(tracking.RUN_TYPE) == tracking.RunType.TRIAL and r.data.tags.get(tracking.FLOOR) != "true"
    ]


def _unended(runs: list) -> list[str]:
    """Return a line per run that is not FINISHED, FAILED or KILLED, or was deleted."""
    lines = [f"{_name(r)}: status {r.info.status}, not terminal" for r in runs if r.info.status not in TERMINAL]
    return lines + [f"{_name(r)}: deleted" for r in runs if r.info.lifecycle_stage != "active"]


def _counted_twice(trials: list) -> list[str]:
    """Return a line per Ray trial id or Optuna trial number that more than one trial run of a
    sweep carries."""
    lines = []
    for tag in (tracking.TRIAL_ID, tracking.OPTUNA_TRIAL):
        keys = Counter(
            (r.data.tags.get(tracking.PARENT), r.data.tags.get(tracking.BASELINE), r.data.tags.get(tag)) for r in trials
        )
        lines += [f"{tag} {key[2]} ({key[1]}): {n} runs" for key, n in keys.items() if n > 1]
    return lines + [f"{_name(r)}: no {tracking.TRIAL_ID} tag" for r in trials if tracking.TRIAL_ID not in r.data.tags]


def _steps(client: MlflowClient, run: Any, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def _series_faults(client: MlflowClient, run: Any) -> list[str]:
    """Return a line per metric of `run` with a step logged twice, per-epoch series that are not
    steps 1..n or not all at the same steps, and a stopped run whose series ends elsewhere than at
    its `stopped_at_epoch`."""
    lines = []
    steps = {key: _steps(client, run, key) for key in run.data.metrics}
    for key, logged in sorted(steps.items()):
        twice = sorted(s for s, n in Counter(logged).items() if n > 1)
        if twice:
            lines.append(f"{_name(run)}: {key} logged twice at step(s) {twice}")
    epochs = sorted(set(steps.get("objective", [])))
    if epochs != list(range(1, len(epochs) + 1)):
        lines.append(f"{_name(run)}: objective at steps {epochs}, not 1..{len(epochs)}")
    for key in PER_EPOCH:
        if sorted(set(steps.get(key, []))) != epochs:
            lines.append(f"{_name(run)}: {key} at steps {sorted(set(steps.get(key, [])))}, objective at {epochs}")
    stopped = run.data.tags.get("stopped_at_epoch")
    if stopped is not None and int(stopped) != len(epochs):
        lines.append(f"{_name(run)}: stopped_at_epoch {stopped}, but {len(epochs)} epochs logged")
    return lines


def _study_faults(storage: str, experiment: str) -> tuple[list[str], int]:
    """Return a line per Optuna trial left unfinished or naming a Ray trial or MLflow run another
    trial names too, and how many trials the experiment's studies hold."""
    lines: list[str] = []
    named: Counter = Counter()
    count = 0
    for name in sorted(optuna.get_all_study_names(optuna_storage(storage))):
        if not name.startswith(f"{experiment}/"):
            continue
        for trial in optuna.load_study(study_name=name, storage=optuna_storage(storage)).get_trials(deepcopy=False):
            count += 1
            if trial.state in (TrialState.RUNNING, TrialState.WAITING):
                lines.append(f"{name} trial {trial.number}: optuna state {trial.state.name}")
            named.update((attr, trial.user_attrs.get(attr)) for attr in (RAY_TRIAL_ATTR, MLFLOW_RUN_ATTR))
    lines += [f"optuna: {n} trials with {attr} {value}" for (attr, value), n in named.items() if n > 1]
    return lines, count


def assert_sweep_intact(
    tracking_uri: str, experiment: str, storage: str, *, trials: int | None = None, driver_interrupted: bool = False
) -> None:
    """Fail, with one line per fault naming the run or trial and the step, unless the stores hold
    `experiment`'s sweeps whole: every run FINISHED, FAILED or KILLED; one MLflow run per Ray trial
    (and `trials` of them, when given); each trial's per-epoch series at steps 1..n with no step
    logged twice; every Optuna trial ended, agreeing with its MLflow run (state, value,
    intermediate values, links both ways, and, unless `driver_interrupted`, the order of its times);
    returns nothing. `tracking_uri` may be the server's address or the store's own SQLAlchemy URL."""
    client = MlflowClient(tracking_uri)
    runs = all_runs(client, experiment)
    trial_set = trial_runs(runs)
    lines = _unended(runs) + _counted_twice(trial_set)
    for run in trial_set:
        lines += _series_faults(client, run)
    study_lines, in_studies = _study_faults(storage, experiment)
    compared, disagreements = mlflow_disagreements(storage, tracking_uri, experiment)
    if driver_interrupted:
        disagreements = [line for line in disagreements if not line.split(": ", 1)[-1].startswith(TIME_LINES)]
    lines += study_lines + disagreements
    if compared != len(trial_set) or in_studies != len(trial_set):
        lines.append(f"{len(trial_set)} trial runs in MLflow, {in_studies} trials in the Optuna studies")
    if trials is not None and len(trial_set) != trials:
        lines.append(f"{len(trial_set)} trial runs, expected {trials}")
    assert not lines, f"{experiment}: the stores disagree with an intact sweep:\n" + "\n".join(lines)


def trial_runs_through(tracking_uri: str, experiment: str, epoch: int, *, node_ip: str | None = None) -> list:
    """Return the trial runs of `experiment` (on the node at `node_ip`, when given) that have logged
    `objective` for `epoch`: the observed state a fault test waits for before it strikes."""
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        return []
    runs = trial_runs(all_runs(client, experiment))
    if node_ip is not None:
        runs = [r for r in runs if r.data.tags.get(tracking.NODE_IP) == node_ip]
    return [r for r in runs if epoch in _steps(client, r, "objective")]


def points_stored_twice(store_url: str) -> list[tuple]:
    """Return (run, metric, step, rows) for every metric point the MLflow store holds more than once,
    read from its tables directly (PostgreSQL), not through MLflow."""
    engine = sqlalchemy.create_engine(store_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT run_uuid, key, step, count(*) FROM metrics GROUP BY run_uuid, key, step HAVING count(*) > 1"
                )
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()
