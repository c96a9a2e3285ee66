"""tools/screenshots.py (`make screenshots`) over a store laid out as `make demo` leaves it: every
picture is written at 1,400 x 900 and is not blank, and the MLflow runs table it pictures lists the
trials by name. The store is written through the harness's own tracker, without a sweep: what is
tested here is the pictures, not the sweep (tests/sweep/ covers that)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image, ImageStat

from harness import tracking
from harness.leaderboard.render import to_html
from harness.leaderboard.table import Cell, Column, ReportTable, Row
from tests.conftest import REPO

pytestmark = [
    # An MLflow server, optuna-dashboard and Chromium started for real: make test-cluster runs it.
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (`make test` installs it when apt-get can)",
    ),
]


def _sweep_runs(tracker: tracking.Tracker) -> None:
    """A sweep run with two finished CancerNet trials under it, each with three epochs of curves."""
    experiment_id = tracker.experiment_id("shots")
    tags = {tracking.DATASET: "idc", tracking.MANIFEST_HASH: "ab" * 32, tracking.DATASET_ROOT: "/data/idc"}
    sweep = tracker.start_run(experiment_id, name="sweep shots", run_type=tracking.RunType.SWEEP, tags=tags, params={})
    for number, lr in enumerate((0.01, 0.001)):
        trial = tracker.start_run(
            experiment_id,
            name=tracking.trial_name("cancernet", number, f"trial{number}"),
            run_type=tracking.RunType.TRIAL,
            parent=sweep,
            tags={**tags, tracking.BASELINE: "cancernet"},
            params={"lr": lr, "batch_size": 32 * (number + 1)},
        )
        for epoch in (1, 2, 3):
            accuracy = 0.6 + 0.05 * epoch + 0.02 * number
            tracker.log_metrics(trial, {"val_accuracy": accuracy, "objective": accuracy}, step=epoch)
        tracker.finish(trial, tracking.FINISHED)
    tracker.set_tags(sweep, {"winner.cancernet": trial})
    tracker.finish(sweep, tracking.FINISHED)


def _study(storage: str) -> None:
    study = optuna.create_study(study_name="shots/sweep/cancernet", storage=storage, direction="maximize")
    study.optimize(lambda t: 1 - (t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01) ** 2, n_trials=6)


def _leaderboard_page(path: Path) -> None:
    columns = [Column("model", "model"), Column("test_accuracy", "test acc", higher_is_better=True)]
    rows = [Row("harness", "cancernet", {"model": Cell("cancernet"), "test_accuracy": Cell("0.8651", 0.8651)})]
    path.parent.mkdir(parents=True)
    path.write_text(to_html("Leaderboard: shots", ["A page."], [ReportTable("summary", "t", columns, rows)], []))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow store, an Optuna store and a leaderboard page where `make demo` leaves them."""
    results = tmp_path_factory.mktemp("screens") / "results"
    results.mkdir()
    _sweep_runs(tracking.open_store(f"sqlite:///{results / 'mlflow.db'}"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _study(f"sqlite:///{results / 'optuna.db'}")
    _leaderboard_page(results / "shots" / "leaderboard.html")
    return results


def _not_blank(path: Path) -> None:
    image = Image.open(path).convert("RGB")
    assert image.size == (1400, 900), path
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, f"{path.name}: {len(colours)} colours"
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, f"{path.name} is nearly one flat colour"


def test_every_picture_is_written_and_not_blank(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    done = subprocess.run(
        [sys.executable, "tools/screenshots.py", "--results", str(results), "--experiment", "shots", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    names = {"mlflow-trials", "mlflow-compare", "mlflow-trial", "leaderboard"}
    if (Path(sys.executable).parent / "optuna-dashboard").exists():
        names.add("optuna-dashboard")
    assert {p.stem for p in out.glob("*.png")} == names
    for path in out.glob("*.png"):
        _not_blank(path)


def test_the_pictured_runs_table_lists_the_trials_by_name(results: Path) -> None:
    from harness.server import start_server
    from tools.screenshots import SIZE, browser, free_port, mlflow_pages

    store = f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(store)
    trials = client.search_runs([client.get_experiment_by_name("shots").experiment_id], 'tags.run_type = "trial"')
    assert {t.info.run_name for t in trials} == {"cancernet t00", "cancernet t01"}
    with tempfile.TemporaryDirectory() as artifacts, browser() as chromium:
        server = start_server(store, Path(artifacts), port=free_port())
        try:
            table = mlflow_pages(MlflowClient(server.uri), server.uri, "shots", "cancernet")[0]
            page = chromium.new_page(viewport=SIZE)
            page.goto(table.url)
            page.locator(".ag-row", has_text="sweep shots").locator("button").first.click()
            for trial in trials:
                page.get_by_text(trial.info.run_name, exact=True).wait_for(timeout=60_000)
            assert page.get_by_text("3 matching runs").count() == 1  # the parent and its two trials
        finally:
            server.stop()
