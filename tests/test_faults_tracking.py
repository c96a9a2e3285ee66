"""The tracking server gone for longer than the harness waits (issue 25), met with real processes:
a real `mlflow server` process killed, real signals. Each case checks the error line and the runs'
states in the store, and a sweep's exit code; the waits are bounded through
HARNESS_TRACKING_OUTAGE_S, never measured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import tracking
from harness.errors import InputError, TrackingUnreachable
from harness.server import check_reachable, server_command, server_environment
from harness.sweep._failures import TRACKING_UNREACHABLE, deterministic_cause, failure_cause
from tests.conftest import REPO, free_port, wait_for
from tests.test_faults import HARNESS, TERMINAL, _long_experiment
from tests.test_faults import small_idc as small_idc  # a fixture, used by name

SINCE = r"\d\d:\d\d:\d\d"


class Server:
    """A real `mlflow server` on 127.0.0.1 in a process group of its own, so that killing it (its
    pid as the group) takes its workers too, as a crashed or stopped server goes."""

    def __init__(self, folder: Path) -> None:
        self.database = folder / "mlflow.db"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the server process and return at once (it answers some seconds later)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        command = server_command(f"sqlite:///{self.database}", self.folder / "artifacts", "127.0.0.1", self.port, 1)
        with (self.folder / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                command, env=server_environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self) -> None:
        """Start the server and return once it answers."""
        self.launch()
        wait_for(self.answers, timeout=180, what=f"mlflow server on port {self.port}")

    def answers(self) -> bool:
        """Return whether the server answers /health."""
        try:
            check_reachable(self.uri, timeout=1.0)
        except InputError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the server's whole process group and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def runs(self, experiment: str) -> list:
        """Return the experiment's runs, read from the server's store file (the server may be down)."""
        client = MlflowClient(f"sqlite:///{self.database}")
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id]) if found else []


@pytest.fixture()
def server(tmp_path: Path):
    """A Server of the test's own, not started yet; killed after the test if it runs."""
    started = Server(tmp_path / "mlflow")
    yield started
    started.kill()


@pytest.fixture()
def short_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trackers made in this test (and processes it starts) give up after 2 s without an answer."""
    monkeypatch.setenv(tracking.OUTAGE_ENV, "2")


def test_a_tracker_gives_up_on_a_dead_server_with_one_line_then_fails_at_once(short_outage: None) -> None:
    tracker = tracking.Tracker(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingUnreachable) as first:
        tracker.experiment_id("x")
    assert re.fullmatch(
        rf"tracking server {re.escape(tracker.uri)} unreachable since {SINCE} \(Connection refused\)", str(first.value)
    )
    assert str(tracker.unreachable) == str(first.value)
    # Given up: the next call says the same (the same first failure) after a single try.
    with pytest.raises(TrackingUnreachable) as again:
        tracker.experiment_id("x")
    assert str(again.value) == str(first.value)
    assert failure_cause(first.value) == TRACKING_UNREACHABLE and deterministic_cause(first.value) is None


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bound_that_is_no_number_of_seconds_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(tracking.OUTAGE_ENV, value)
    with pytest.raises(InputError, match=rf"^HARNESS_TRACKING_OUTAGE_S='{re.escape(value)}': expected a number"):
        tracking.Tracker("http://127.0.0.1:1")


# A driver in Tune's loop (Tune's own SIGUSR1 handler installed) whose tracking call waits on a dead
# server: a Ctrl-C makes it give up at once, though the bound (the environment's) is minutes.
SIGNALLED = """
import os, signal, sys, threading
from harness import tracking
from harness.errors import TrackingUnreachable
from harness.sweep._signals import catching_interrupts

tracker = tracking.Tracker(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *_: None)
with catching_interrupts() as interrupts:
    interrupts.in_search = True
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        tracker.experiment_id("x")
    except TrackingUnreachable as exc:
        print(exc)
"""


def test_a_signal_in_the_search_makes_a_waiting_tracking_call_give_up_at_once() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    signalled = subprocess.run(
        [sys.executable, "-c", SIGNALLED, uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, tracking.OUTAGE_ENV: "3600"},
    )
    assert signalled.returncode == 0, signalled.stderr[-3000:]
    assert re.fullmatch(
        rf"tracking server {re.escape(uri)} unreachable since {SINCE} \(Connection refused\)", signalled.stdout.strip()
    )


def test_a_brief_outage_rides_through_and_a_long_one_leaves_the_run_running(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call made while the server is not up yet waits for it (a restart takes seconds); once the
    server is gone for longer than the bound, the run's block ends with TrackingUnreachable and the
    run stays RUNNING for close-orphans (the store takes no write)."""
    monkeypatch.setenv(tracking.OUTAGE_ENV, "180")
    patient = tracking.Tracker(server.uri)
    server.launch()
    experiment_id = patient.experiment_id("outage")
    monkeypatch.setenv(tracking.OUTAGE_ENV, "2")
    tracker = tracking.Tracker(server.uri)
    with pytest.raises(TrackingUnreachable):
        with tracker.run(experiment_id, name="r", run_type=tracking.RunType.TRAIN, tags={}, params={}) as run_id:
            server.kill()
            tracker.log_metrics(run_id, {"loss": 1.0}, step=1)
    (run,) = server.runs("outage")
    assert (run.info.run_id, run.info.status) == (run_id, "RUNNING")


def _error_lines(stderr: str) -> list[str]:
    """Return the `error:` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.e2e
def test_a_tracking_server_gone_for_longer_than_the_bound_interrupts_the_sweep_in_one_line(
    tmp_path: Path, small_idc: Path, server: Server, short_outage: None
) -> None:
    server.start()
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    driver = subprocess.Popen(
        [*HARNESS, "sweep", str(path), "--tracking-uri", server.uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any((out / "faults" / "ray").rglob("checkpoint_*")), timeout=300, what="a trial checkpoint")
    server.kill()
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 75, stderr[-3000:]
    assert [re.sub(SINCE, "HH:MM:SS", line) for line in _error_lines(stderr)] == [
        f"error: tracking server {server.uri} unreachable since HH:MM:SS (Connection refused); the sweep is "
        f"interrupted: continue with harness sweep {path} --resume"
    ]
    runs = server.runs("faults")
    assert runs and {r.info.status for r in runs if r.data.tags["run_type"] == "sweep"} == {"RUNNING"}
    # What the SLURM job does after a failed sweep, on the server's own store: nothing stays RUNNING.
    closed = subprocess.run(
        [*HARNESS, "close-orphans", str(path), "--tracking-uri", f"sqlite:///{server.database}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert closed.returncode == 0, closed.stderr[-3000:]
    assert {r.info.status for r in server.runs("faults")} <= TERMINAL
