"""Screenshots of what a researcher opens after `make demo`, for the README: the MLflow UI as
`harness ui` opens it (the latest sweep's trials in the runs table, their chart view with each
baseline's parallel coordinates, a winning trial's page), optuna-dashboard on the sweep's Optuna
store, and the leaderboard page. Each is a 1,400 x 900 PNG from Debian's Chromium,
headless, driven by Playwright (both come with `pip install -e '.[dashboard]'` but Chromium).

usage: python tools/screenshots.py [--results results] [--experiment demo] [--baseline cancernet]
                                   [--out docs/screenshots]

The MLflow server and optuna-dashboard listen on 127.0.0.1 only, on free ports, and stop at the end.
optuna-dashboard is an optional extra (pip install -e '.[dashboard]'); without it that picture is
skipped with a line saying so. Exit 2 with one line when the store or Chromium is missing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from playwright.sync_api import Browser, sync_playwright

from harness.mlflow_view import view_url, write_latest_sweep_view
from harness.server import start_server
from harness.tracking import tracker_for

SIZE = {"width": 1400, "height": 900}
# Chromium on a closed network: no background fetches, each refused one by one.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRIALS = 'tags.run_type = "trial"'


class Missing(Exception):
    """What the pictures need is not there: the store, or Chromium."""


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Picture:
    """A page to picture: its URL and a Playwright selector that matches once it has rendered."""

    name: str
    url: str
    ready: str


@contextmanager
def browser() -> Iterator[Browser]:
    """Yield Debian's Chromium, headless, driven by Playwright."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def shoot(chromium: Browser, picture: Picture, out: Path) -> Path:
    """Write `picture` as a 1,400 x 900 PNG in `out`, MLflow's assistant panel closed."""
    page = chromium.new_page(viewport=SIZE)
    try:
        page.goto(picture.url)
        page.locator(picture.ready).first.wait_for(timeout=60_000)
        close = page.locator('button[aria-label="Close"]')
        if close.count():
            close.first.click()
        page.wait_for_timeout(1500)  # charts finish drawing
        path = out / f"{picture.name}.png"
        page.screenshot(path=path)
        return path
    finally:
        page.close()


@contextmanager
def optuna_dashboard(storage: str) -> Iterator[str | None]:
    """Run optuna-dashboard over `storage` on 127.0.0.1; yields its URL, None when not installed."""
    command = Path(sys.executable).parent / "optuna-dashboard"
    if not command.exists():
        yield None
        return
    port = free_port()
    process = subprocess.Popen(
        [str(command), storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(60):
            try:
                if requests.get(f"{url}/api/studies", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _study_id(dashboard: str, experiment: str, baseline: str) -> int | None:
    """Return the id optuna-dashboard gives the newest study of `baseline` in `experiment`."""
    studies = requests.get(f"{dashboard}/api/studies", timeout=10).json()["study_summaries"]
    mine = [s for s in studies if s["study_name"].startswith(experiment) and s["study_name"].endswith(baseline)]
    return max(mine, key=lambda s: s["study_id"])["study_id"] if mine else None


def mlflow_pages(client: MlflowClient, uri: str, experiment: str, baseline: str) -> list[Picture]:
    """Return the MLflow UI pages to picture, as `harness ui` opens them (its view of the latest
    sweep, saved first): the trials in the runs table, their chart view (the baseline's parallel
    coordinates first), and the baseline's winning trial's page."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise Missing(f"no MLflow experiment {experiment!r} in {uri}; run `make demo` first")
    eid = found.experiment_id
    if not write_latest_sweep_view(tracker_for(uri), eid):
        raise Missing(f"experiment {experiment!r} in {uri} has no sweep; run `make demo` first")
    trials = client.search_runs([eid], f"{TRIALS} and tags.baseline = '{baseline}'")
    sweep = client.search_runs([eid], 'tags.run_type = "sweep"', order_by=["attributes.start_time DESC"])[0]
    winner = sweep.data.tags.get(f"winner.{baseline}", trials[0].info.run_id)
    return [
        Picture("mlflow-trials", view_url(uri, eid), "text=outcome"),
        Picture("mlflow-compare", view_url(uri, eid, charts=True), "text=Parallel Coordinates"),
        Picture("mlflow-trial", f"{uri}/#/experiments/{eid}/runs/{winner}", "text=Description"),
    ]


def take_all(results: Path, experiment: str, baseline: str, out: Path) -> list[Path]:
    """Write every picture into `out`; returns the files written."""
    database = results / "mlflow.db"
    if not database.is_file():
        raise Missing(f"{database}: no MLflow store; run `make demo` first")
    if shutil.which("chromium") is None:
        raise Missing("chromium not found (Debian's chromium package; `make test` installs it as root)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with browser() as chromium:
        with tempfile.TemporaryDirectory() as artifacts:
            server = start_server(f"sqlite:///{database.resolve()}", Path(artifacts), port=free_port())
            try:
                pictures = mlflow_pages(MlflowClient(server.uri), server.uri, experiment, baseline)
                written += [shoot(chromium, picture, out) for picture in pictures]
            finally:
                server.stop()
        with optuna_dashboard(f"sqlite:///{(results / 'optuna.db').resolve()}") as dashboard:
            study = _study_id(dashboard, experiment, baseline) if dashboard else None
            if study is None:
                print("optuna-dashboard is not installed (pip install -e '.[dashboard]'): its picture is skipped")
            else:
                url = f"{dashboard}/dashboard/studies/{study}"
                written.append(shoot(chromium, Picture("optuna-dashboard", url, ".js-plotly-plot"), out))
        page = results / experiment / "leaderboard.html"
        if page.is_file():
            written.append(shoot(chromium, Picture("leaderboard", page.resolve().as_uri(), "table"), out))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="the sweep's output_dir")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--baseline", default="cancernet", help="whose trials the compare view shows")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    try:
        written = take_all(args.results, args.experiment, args.baseline, args.out)
    except Missing as missing:
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
