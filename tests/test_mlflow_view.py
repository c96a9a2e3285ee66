"""The saved view `harness ui` opens MLflow on, written to a real SQLite store through the tracker:
what it filters, sorts, shows and charts (tests/test_screenshots.py opens it in a browser)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from harness import mlflow_view, tracking


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> tracking.Tracker:
    """One SQLite store for the module (creating its schema is most of a test's time)."""
    return tracking.open_store(f"sqlite:///{tmp_path_factory.mktemp('view') / 'mlflow.db'}")


def _sweep(tracker: tracking.Tracker, experiment_id: str, spaces: dict[str, list[dict]]) -> str:
    """A finished sweep run with one trial per point of each baseline's `spaces`."""
    sweep = tracker.start_run(experiment_id, name="sweep", run_type=tracking.RunType.SWEEP, tags={}, params={})
    for baseline, points in spaces.items():
        for number, point in enumerate(points):
            trial = tracker.start_run(
                experiment_id,
                name=tracking.trial_name(baseline, number, "x"),
                run_type=tracking.RunType.TRIAL,
                parent=sweep,
                tags={tracking.BASELINE: baseline},
                params={"input_size": 48, **point},
            )
            tracker.log_metrics(trial, {"objective": 0.5}, step=1)
            tracker.finish(trial, tracking.FINISHED)
    tracker.finish(sweep, tracking.FINISHED)
    return sweep


def _saved_state(uri: str, experiment_id: str) -> tuple[str, dict]:
    envelope = json.loads(MlflowClient(uri).get_experiment(experiment_id).tags[mlflow_view.VIEW_TAG])
    return envelope["name"], json.loads(envelope["state"])


def test_the_view_shows_the_latest_sweeps_trials_with_outcome_objective_and_searched_params(
    tracker: tracking.Tracker,
) -> None:
    experiment_id = tracker.experiment_id("view")
    tracker.set_experiment_tags(experiment_id, tracking.experiment_tags("min"))
    _sweep(tracker, experiment_id, {"cancernet": [{"lr": 0.1}, {"lr": 0.2}]})
    cancernet = [{"lr": 0.1, "batch_size": 32}, {"lr": 0.2, "batch_size": 32}]
    latest = _sweep(tracker, experiment_id, {"cancernet": cancernet, "resnet18": [{"freeze": "no"}, {"freeze": "all"}]})
    assert mlflow_view.write_latest_sweep_view(tracker, experiment_id)
    name, state = _saved_state(tracker.uri, experiment_id)
    assert name == mlflow_view.VIEW_NAME
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{latest}' and tags.run_type = 'trial'"
    # The objective is minimised here: lowest first. batch_size and input_size never varied.
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`objective`", True)
    expected = ["tags.`outcome`", "metrics.`objective`", "params.`lr`", "params.`freeze`"]
    assert state["selectedColumns"] == state["columnOrder"] == expected
    assert state["runsHiddenMode"] == "SHOW_ALL"
    charts = [(c["type"], c["selectedParams"], c["selectedMetrics"]) for c in state["compareRunCharts"]]
    # One per baseline, in the order they started; MLflow colours the lines by the last metric.
    assert charts == [("PARALLEL", ["lr"], ["objective"]), ("PARALLEL", ["freeze"], ["objective"])]
    filtered = MlflowClient(tracker.uri).search_runs([experiment_id], state["searchFilter"])
    assert len(filtered) == 4
    assert mlflow_view.newest_sweep_experiment(tracker) == experiment_id


def test_an_experiment_without_a_sweep_gets_no_view(tracker: tracking.Tracker) -> None:
    experiment_id = tracker.experiment_id("empty")
    assert not mlflow_view.write_latest_sweep_view(tracker, experiment_id)
    assert mlflow_view.VIEW_TAG not in MlflowClient(tracker.uri).get_experiment(experiment_id).tags
    assert mlflow_view.newest_sweep_experiment(tracker) != experiment_id


def test_the_view_url_opens_the_table_or_the_charts() -> None:
    base = "http://127.0.0.1:5000/"
    assert (
        mlflow_view.view_url(base, "3")
        == "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=harness-latest-sweep"
    )
    assert mlflow_view.view_url(base, "3", charts=True).endswith(
        "viewStateShareKey=harness-latest-sweep&compareRunsMode=CHART"
    )


def test_harness_ui_refuses_a_missing_store_and_a_taken_port_in_one_line(
    tracker: tracking.Tracker, tmp_path: Path
) -> None:
    import socket

    from typer.testing import CliRunner

    from harness.cli import app

    missing = tmp_path / "nowhere" / "mlflow.db"
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and f"{missing}: no MLflow store there" in " ".join(result.output.split())
    assert not missing.exists()
    _sweep(tracker, tracker.experiment_id("refusals"), {"cancernet": [{"lr": 0.1}, {"lr": 0.2}]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--tracking-uri", tracker.uri, "--port", str(port)])
    assert result.exit_code == 2 and f"--port {port}: already in use" in " ".join(result.output.split())


def test_the_view_state_is_the_format_checked_against_mlflow_3_17() -> None:
    """harness/mlflow_view.py writes the UI's own view state, which MLflow documents nowhere: this
    fails on another MLflow version, so an upgrade re-checks the format against its UI."""
    assert mlflow.__version__.startswith("3.17."), (
        f"MLflow {mlflow.__version__}: check harness/mlflow_view.py's view state against this UI, then this test"
    )
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main = "".join(path.read_text(errors="replace") for path in bundle.glob("main.*.js"))
    assert "mlflow.sharedViewState." in main and "viewStateShareKey" in main
