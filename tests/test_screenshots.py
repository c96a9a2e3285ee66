"""tools/screenshots.py (`make screenshots`) and `harness ui` over a store laid out as `make demo`
leaves it: every picture is written at 1,400 x 900 and is not blank; `harness ui` opens the runs
table on the sweep's trials with their outcome and objective as columns on first load; the compare
views colour the trials by the objective. The store is written through the harness's own tracker,
without a sweep: what is tested here is what the browser shows, not the sweep (tests/sweep/ covers
that)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image, ImageStat
from playwright.sync_api import Page

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


# A trial's outcome and learning rate: one of each outcome the runs table tells apart.
TRIALS = {"completed": 0.01, "stopped_early": 0.001, "failed": 0.1}


def _sweep_runs(tracker: tracking.Tracker) -> None:
    """A sweep run with three CancerNet trials under it, as a sweep logs them: one completed, one
    stopped early, one failed after its first epoch; each with its parameter counts as tags."""
    experiment_id = tracker.experiment_id("shots")
    tracker.set_experiment_tags(experiment_id, tracking.experiment_tags("max"))
    tags = {tracking.DATASET: "idc", tracking.MANIFEST_HASH: "ab" * 32, tracking.DATASET_ROOT: "/data/idc"}
    sweep = tracker.start_run(experiment_id, name="sweep shots", run_type=tracking.RunType.SWEEP, tags=tags, params={})
    for number, (outcome, lr) in enumerate(TRIALS.items()):
        trial = tracker.start_run(
            experiment_id,
            name=tracking.trial_name("cancernet", number, f"trial{number}"),
            run_type=tracking.RunType.TRIAL,
            parent=sweep,
            tags={**tags, tracking.BASELINE: "cancernet", f"{tracking.PARAM_COUNT_PREFIX}torch": "587618"},
            params={"lr": lr, "batch_size": 32 * (number + 1), "input_size": 48},
        )
        for epoch in (1,) if outcome == "failed" else (1, 2, 3):
            accuracy = 0.6 + 0.05 * epoch + 0.02 * number
            # The sweep's checkpoint size (harness.sweep._trial.CHECKPOINT_MB) beside the objective.
            metrics = {"val_accuracy": accuracy, "objective": accuracy, "trial_checkpoint_mb": 2.5}
            tracker.log_metrics(trial, metrics, step=epoch)
        stopped = {tracking.STOPPED_BY: tracking.STOPPED_BY_HALVING} if outcome == "stopped_early" else {}
        tracker.finish(trial, tracking.FAILED if outcome == "failed" else tracking.FINISHED, stopped)
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


@contextmanager
def _harness_ui(results: Path, *options: str) -> Iterator[str]:
    """Run `harness ui` over the store in `results` on a free port; yields the address it prints."""
    from tools.screenshots import free_port

    store = f"sqlite:///{results / 'mlflow.db'}"
    command = [sys.executable, "-m", "harness", "ui", "--tracking-uri", store, "--port", str(free_port()), *options]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the server migrates the store first: tens of seconds
            lines.append(line)
            if line.startswith("http://127.0.0.1:"):
                yield line.strip()
                return
        raise AssertionError("harness ui printed no address:\n" + "".join(lines))
    finally:
        # SIGTERM, which harness ui takes as Ctrl-C: a test run started in the background (nohup
        # ... &) inherits SIGINT ignored, and harness ui would never stop.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _header_box(page: Page, name: str) -> dict:
    """Return where the runs table's column header `name` is drawn, once it is."""
    header = page.locator("[role=columnheader]", has_text=re.compile(f"^{name}$")).first
    header.wait_for(timeout=60_000)
    box = header.bounding_box()
    assert box is not None, name
    return box


def test_harness_ui_opens_on_the_trials_with_outcome_and_objective_columns(results: Path) -> None:
    from tools.screenshots import SIZE, browser

    with _harness_ui(results) as url, browser() as chromium:
        assert "viewStateShareKey=harness-latest-sweep" in url
        page = chromium.new_page(viewport=SIZE)
        page.goto(url)
        boxes = {name: _header_box(page, name) for name in ("outcome", "objective", "lr", "batch_size")}
        # On first load, in this order, inside the 1,400 px window.
        xs = [boxes[name]["x"] for name in ("outcome", "objective", "lr")]
        assert xs == sorted(xs) and all(b["x"] + b["width"] <= SIZE["width"] for b in boxes.values()), boxes
        for outcome, number in zip(TRIALS, range(3)):
            # The grid draws a row's pinned name and its other cells as elements of one row-index.
            index = page.locator("[role=row]", has_text=f"cancernet t{number:02d}").first.get_attribute("row-index")
            assert outcome in " ".join(page.locator(f"[role=row][row-index='{index}']").all_inner_texts()).split()
        # The sweep's trials alone: no parent row to expand.
        assert page.get_by_text("3 matching runs").count() == 1
        page.close()


def test_the_compare_views_colour_the_trials_by_the_objective(results: Path) -> None:
    from harness.server import start_server
    from tools.screenshots import SIZE, browser, free_port

    store = f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("shots").experiment_id
    trials = client.search_runs([experiment_id], 'tags.run_type = "trial"')
    runs = json.dumps([t.info.run_id for t in trials])
    with tempfile.TemporaryDirectory() as artifacts, browser() as chromium:
        server = start_server(store, Path(artifacts), port=free_port())
        try:
            page = chromium.new_page(viewport=SIZE)
            # MLflow's compare page colours its parallel coordinates by the first metric the runs share.
            page.goto(
                f"{server.uri}/#/compare-runs?runs={quote(runs)}&experiments={quote(json.dumps([experiment_id]))}"
            )
            axes = page.locator(".pcp-plot .axis-title")
            axes.last.wait_for(timeout=60_000)
            assert axes.all_text_contents()[-1] == "objective"
            assert "trial_checkpoint_mb" not in axes.all_text_contents()
            page.close()
        finally:
            server.stop()
    # harness ui's chart view: the baseline's searched parameters against the objective, every trial drawn.
    with _harness_ui(results, "--charts") as url, browser() as chromium:
        page = chromium.new_page(viewport=SIZE)
        page.goto(url)
        page.get_by_text("Parallel Coordinates").first.wait_for(timeout=60_000)
        axes = page.locator(".parcoords text.label")
        axes.last.wait_for(timeout=60_000)
        assert axes.all_text_contents() == ["batch_size", "lr", "objective"]
        page.close()
