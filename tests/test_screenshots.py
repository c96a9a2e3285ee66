"""tools/screenshots.py (`make screenshots`) on a small real sweep: every picture is written at
1,400 x 900 and is not blank, and the MLflow runs table it pictures lists the trials by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image, ImageStat

from tests.conftest import REPO, experiment_dict, write_experiment

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (`make test` installs it when apt-get can)",
)
HARNESS = [sys.executable, "-m", "harness"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> Path:
    """A sweep of two CancerNet trials and its leaderboard, in the layout `make demo` leaves."""
    tmp = tmp_path_factory.mktemp("screens")
    search = {"trials": 2, "max_epochs": 1, "grace_period": 1, "sampler": "random", "retrain": "none"}
    path = write_experiment(
        tmp / "shots.yaml", experiment_dict(synthetic_idc, tmp / "results", name="shots", search=search, floors=[])
    )
    for command in (["sweep", str(path)], ["leaderboard", str(path)]):
        done = subprocess.run([*HARNESS, *command], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "results"


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
