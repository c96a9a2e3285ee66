"""The tracker's one run lifecycle, on a real SQLite MLflow store: every way out of a run's block
leaves the run in a terminal state that says how it ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness import tracking
from harness.config import load_experiment
from harness.experiment import set_up
from tests.conftest import experiment_dict, write_experiment


@pytest.fixture()
def store(tmp_path: Path) -> tuple[tracking.Tracker, str]:
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tracker, tracker.experiment_id("lifecycle")


def _open(tracker: tracking.Tracker, experiment_id: str, run_type=tracking.RunType.TRIAL):
    return tracker.run(experiment_id, name="r", run_type=run_type, tags={"k": "v"}, params={"lr": 0.1})


def test_a_run_whose_block_completes_ends_finished_with_its_type_tags_and_params(store) -> None:
    tracker, experiment_id = store
    with _open(tracker, experiment_id, tracking.RunType.FOLD) as run_id:
        assert MlflowClient(tracker.uri).get_run(run_id).info.status == "RUNNING"
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert run.info.status == tracking.FINISHED
    assert run.data.tags[tracking.RUN_TYPE] == "fold"
    assert run.data.tags["k"] == "v" and run.data.params == {"lr": "0.1"}
    assert tracking.ERROR not in run.data.tags
    assert run.data.tags[tracking.OUTCOME] == "completed"


def test_a_run_whose_block_raises_ends_failed_with_the_error_and_the_error_propagates(store) -> None:
    tracker, experiment_id = store
    with pytest.raises(ValueError, match="bad batch"), _open(tracker, experiment_id) as run_id:
        raise ValueError("bad batch")
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert (run.info.status, run.data.tags[tracking.OUTCOME]) == (tracking.FAILED, "failed")
    error = run.data.tags[tracking.ERROR]
    assert error.startswith("ValueError: bad batch\n\nTraceback (most recent call last):")
    assert error.endswith("ValueError: bad batch")


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_run_interrupted_or_exited_ends_killed(store, stop: type[BaseException]) -> None:
    tracker, experiment_id = store
    with pytest.raises(stop), _open(tracker, experiment_id) as run_id:
        raise stop()
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert (run.info.status, run.data.tags[tracking.OUTCOME]) == (tracking.KILLED, "interrupted")
    assert tracking.ERROR not in run.data.tags
    tracker.reopen(run_id)
    reopened = MlflowClient(tracker.uri).get_run(run_id)
    assert reopened.info.status == "RUNNING" and tracking.OUTCOME not in reopened.data.tags


def test_ending_closes_a_run_opened_elsewhere_after_its_nested_runs(store) -> None:
    tracker, experiment_id = store
    parent = tracker.start_run(experiment_id, name="p", run_type=tracking.RunType.SWEEP, tags={}, params={})
    nested = tracker.run(experiment_id, name="c", run_type=tracking.RunType.ENSEMBLE, tags={}, params={}, parent=parent)
    with pytest.raises(RuntimeError), tracker.ending(parent):
        with nested as child:
            pass
        raise RuntimeError("after the child")
    client = MlflowClient(tracker.uri)
    assert client.get_run(parent).info.status == tracking.FAILED
    (found,) = tracker.child_runs(experiment_id, parent, tracking.RunType.ENSEMBLE)
    assert found.info.run_id == child and found.info.status == tracking.FINISHED


def test_run_types_are_the_nine_the_harness_writes() -> None:
    assert sorted(tracking.RunType) == sorted(
        ["sweep", "trial", "lost_trial", "floor", "fold", "ensemble", "train", "study", "study_arm"]
    )


@pytest.mark.parametrize(
    ("status", "tags", "expected"),
    [
        (tracking.FINISHED, {}, "completed"),
        (tracking.FINISHED, {tracking.STOPPED_BY: "asha"}, "stopped_early"),
        (tracking.FINISHED, {tracking.STOPPED_BY: "halving"}, "stopped_early"),
        (tracking.KILLED, {tracking.STOPPED_BY: "driver_lost"}, "interrupted"),
        (tracking.KILLED, {tracking.INTERRUPTED: "SIGTERM"}, "interrupted"),
        (tracking.KILLED, {tracking.ORPHANED: "true"}, "orphaned"),
        (tracking.FAILED, {tracking.ERROR: "x"}, "failed"),
    ],
)
def test_outcome_says_why_a_run_ended(status: str, tags: dict, expected: str) -> None:
    assert tracking.outcome(status, tags) == expected


@pytest.mark.parametrize(("metric", "greater"), [("val_accuracy", "true"), ("val_loss", "false")])
def test_an_experiment_opens_as_model_development_ranked_by_the_objective(
    tmp_path: Path, synthetic_idc: Path, metric: str, greater: str
) -> None:
    data = experiment_dict(synthetic_idc, tmp_path / "out", name="kind", search={"metric": metric})
    config = load_experiment(write_experiment(tmp_path / "x.yaml", data))
    setup = set_up(config)
    tags = MlflowClient(config.resolved_tracking_uri()).get_experiment(setup.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.experiment.primaryMetric.name"] == "objective"
    assert tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == greater


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("http://mlflow.lab:5000/", "http://mlflow.lab:5000/#/experiments/3/runs/abc"),
        ("https://mlflow.lab/mlflow", "https://mlflow.lab/mlflow/#/experiments/3/runs/abc"),
        # A store written directly has no server: the address `mlflow ui --backend-store-uri URI` serves.
        ("sqlite:////work/results/mlflow.db", "http://127.0.0.1:5000/#/experiments/3/runs/abc"),
        ("postgresql+psycopg://db/mlflow", "http://127.0.0.1:5000/#/experiments/3/runs/abc"),
        ("/work/results/mlruns", "http://127.0.0.1:5000/#/experiments/3/runs/abc"),
        ("databricks", None),
    ],
)
def test_a_run_s_address_is_under_its_server_or_where_mlflow_ui_serves_its_store(uri: str, url: str | None) -> None:
    assert tracking.run_url(uri, "3", "abc") == url


def test_attempts_count_retries_not_a_schedulers_pauses(store) -> None:
    tracker, experiment_id = store
    run_id = tracker.start_run(experiment_id, name="t", run_type=tracking.RunType.TRIAL, tags={}, params={})
    # Started, paused twice by halving and resumed on another node: one attempt, three starts.
    assert [tracker.record_start(run_id, node, "127.0.0.1") for node in ("n1", "n1", "n2")] == [1, 2, 3]
    tags = MlflowClient(tracker.uri).get_run(run_id).data.tags
    assert (tags[tracking.ATTEMPTS], tags[tracking.NODE_IDS]) == ("1", "n1,n1,n2")
    tracker.count_attempt(run_id, {tracking.RETRIES: "1"})  # a failure, retried
    assert tracker.record_start(run_id, "n2", "127.0.0.1") == tracker.starts(run_id) == 4
    tags = MlflowClient(tracker.uri).get_run(run_id).data.tags
    assert (tags[tracking.ATTEMPTS], tags[tracking.RETRIES], tags[tracking.NODE_ID]) == ("2", "1", "n2")


def test_the_leaderboard_line_of_a_sweeps_description_is_replaced_once_attached() -> None:
    pending = "**Winners** by val_accuracy: cancernet t03 (0.8481)\n\nText.\n\n" + tracking.leaderboard_line(None)
    attached = tracking.with_leaderboard_line(pending, tracking.leaderboard_line("2026-12-04 09:40 UTC"))
    assert attached.splitlines()[:3] == pending.splitlines()[:3]
    assert attached.splitlines()[-1] == tracking.leaderboard_line("2026-12-04 09:40 UTC")
    assert "not attached yet" not in attached
    assert tracking.with_leaderboard_line(attached, tracking.leaderboard_line("later")).count("**Leaderboard**") == 1
    # A sweep described before the line existed gets it as a paragraph of its own.
    assert tracking.with_leaderboard_line("Old text.", "**Leaderboard**: x") == "Old text.\n\n**Leaderboard**: x"


def test_a_metrics_batch_resent_after_the_store_took_it_is_stored_once(store, monkeypatch) -> None:
    """A server that committed a batch and then lost the connection before answering (a restart)
    gets the same batch again from the tracker's retry: the store keeps one point per step."""
    tracker, experiment_id = store
    commit = tracker.client.log_batch
    answers_lost = []

    def commit_then_lose_the_answer(*args, **kwargs):
        commit(*args, **kwargs)
        if not answers_lost:
            answers_lost.append(True)
            raise MlflowException(
                "API request to http://10.0.0.2:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                "ConnectionError('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"
            )

    with _open(tracker, experiment_id) as run_id:
        monkeypatch.setattr(tracker.client, "log_batch", commit_then_lose_the_answer)
        tracker.log_metrics(run_id, {"objective": 0.5, "val_loss": 0.7}, step=1)
        tracker.log_metrics(run_id, {"objective": 0.6, "val_loss": 0.6}, step=2)
    assert answers_lost == [True]
    client = MlflowClient(tracker.uri)
    for key in ("objective", "val_loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]


def test_a_run_reopened_after_its_dead_drivers_runs_were_closed_is_no_longer_orphaned(store) -> None:
    """close-orphans ended the run KILLED (orphaned=true); a resumed sweep continuing it reopens it."""
    tracker, experiment_id = store
    with _open(tracker, experiment_id) as run_id:
        tracker.finish(run_id, tracking.KILLED, {tracking.ORPHANED: "true"})
        tracker.reopen(run_id)
        run = MlflowClient(tracker.uri).get_run(run_id)
        assert run.info.status == "RUNNING"
        assert {tracking.ORPHANED, tracking.OUTCOME} & set(run.data.tags) == set()
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert (run.info.status, run.data.tags[tracking.OUTCOME]) == (tracking.FINISHED, "completed")
