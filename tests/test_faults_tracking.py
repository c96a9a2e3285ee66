"""Two faults of issue 25 met with real processes: the tracking server gone for longer than the
harness waits (a real `mlflow server` process killed), and a trial out of memory (torch's real
allocator errors under a lowered address-space limit, and Ray's real memory monitor killing a
trial's worker). Each case checks the exit code, the one `error:` line and the runs' states in the
store; the waits are bounded through HARNESS_TRACKING_OUTAGE_S, never measured."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from ray.exceptions import OutOfMemoryError

from harness import ray_compat, tracking
from harness.errors import InputError, TrackingUnreachable
from harness.server import check_reachable, server_command, server_environment
from harness.sweep._failures import OUT_OF_MEMORY, TRACKING_UNREACHABLE, WORKER_LOST, deterministic_cause, failure_cause
from harness.train import allocation_failure
from tests.conftest import REPO, free_port, wait_for
from tests.test_faults import HARNESS, TERMINAL, _experiment, _long_experiment, _sweep_past_first_checkpoint
from tests.test_faults import small_idc as small_idc  # a fixture, used by name

SINCE = r"\d\d:\d\d:\d\d"
GIB = 2**30


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


def test_metrics_the_server_did_not_answer_are_sent_again_only_past_their_check(short_outage: None) -> None:
    """A trial cut off from the server checks, before it sends an epoch again, that it still owns
    its run (harness.sweep._trial); the check's refusal ends the call, nothing sent again."""
    tracker = tracking.Tracker(f"http://127.0.0.1:{free_port()}")
    checks: list[int] = []

    def stale() -> None:
        checks.append(1)
        raise RuntimeError("started again elsewhere")

    with pytest.raises(RuntimeError, match="started again elsewhere"):
        tracker.log_metrics("run", {"objective": 0.5}, step=1, before_resend=stale)
    assert checks == [1]


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
from harness.interrupts import catching_interrupts

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


@pytest.mark.cluster  # an MLflow server process killed and restarted (make test-cluster)
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


def _address_space(limit: int):
    """Return a preexec_fn limiting the child's address space to `limit` bytes (RLIMIT_AS)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return limited


ALLOCATE = """
import torch
try:
    torch.empty(64 * 2**30, dtype=torch.uint8)
except RuntimeError as exc:
    print(exc)
"""


def test_torchs_cpu_allocator_error_is_out_of_memory_with_the_size_it_asked_for() -> None:
    command = [sys.executable, "-c", ALLOCATE]
    allocated = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_address_space(8 * GIB))
    message = allocated.stdout.strip()
    assert "DefaultCPUAllocator" in message, allocated.stderr[-2000:]
    assert allocation_failure(message) == "64.00 GiB of host memory"
    assert deterministic_cause(RuntimeError(message)) == OUT_OF_MEMORY
    assert failure_cause(f"RuntimeError: {message}") == OUT_OF_MEMORY


def test_cudas_out_of_memory_error_is_out_of_memory_with_the_size_it_asked_for() -> None:
    # torch's own wording (c10/cuda/CUDACachingAllocator.cpp); this machine may have no GPU to raise it.
    error = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
        "1.19 GiB is free. Of the allocated memory 137.1 GiB is allocated by PyTorch"
    )
    assert allocation_failure(error) == "2.00 GiB of GPU memory"
    assert deterministic_cause(error) == OUT_OF_MEMORY


def test_a_worker_rays_memory_monitor_killed_is_out_of_memory_not_a_lost_worker() -> None:
    report = (
        "1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.1, ID: ab) "
        "was 22.91GB used / 23.54GB limit (0.973)\nOOM kill reason: Memory usage 24600B exceeded threshold"
    )
    killed = ray_compat.MemoryMonitorKill(str(OutOfMemoryError(report)))
    assert str(killed) == (
        "a worker was killed due to the node running low on memory (22.91GB used / 23.54GB limit): lower "
        "batch_size or input_size, or run fewer trials at once (search.max_concurrent)"
    )
    assert failure_cause(killed) == OUT_OF_MEMORY and failure_cause(report) == OUT_OF_MEMORY
    assert failure_cause("ray.exceptions.ActorDiedError: The actor died unexpectedly") == WORKER_LOST


def _error_lines(stderr: str) -> list[str]:
    """Return the `error:` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.e2e  # a whole `harness train` process under an address-space limit (make test-cluster)
def test_harness_train_out_of_host_memory_fails_its_run_in_one_line_naming_the_allocation(
    tmp_path: Path, small_idc: Path
) -> None:
    """A real `harness train` whose input size cannot fit in the address space it is given."""
    out = tmp_path / "out"
    baselines = [{"name": "cancernet", "fixed": {"batch_size": 4, "input_size": 4096}}]
    path = _experiment(tmp_path / "x.yaml", small_idc, out, baselines=baselines)
    result = subprocess.run(
        [*HARNESS, "train", str(path), "--baseline", "cancernet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_address_space(8 * GIB),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = _error_lines(result.stderr)
    asked = r"could not allocate [\d.]+ GiB of host memory; lower batch_size or input_size"
    assert re.fullmatch(rf"error: out of memory: cancernet at batch_size 4 and input_size 4096x4096 {asked}", line)
    assert "Traceback" not in result.stderr
    (run,) = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs([_experiment_id(out)])
    assert (run.info.status, run.data.tags["outcome"]) == ("FAILED", "failed")
    assert run.data.tags["error"].startswith(f"OutOfMemory: {line.removeprefix('error: out of memory: ')}\n")


def _experiment_id(out: Path, name: str = "faults") -> str:
    """Return the id of experiment `name` in the SQLite store under `out`."""
    found = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name(name)
    assert found is not None
    return found.experiment_id


@pytest.mark.e2e
def test_a_tracking_server_gone_for_longer_than_the_bound_interrupts_the_sweep_in_one_line(
    tmp_path: Path, small_idc: Path, server: Server, short_outage: None
) -> None:
    server.start()
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    driver = _sweep_past_first_checkpoint(path, out, "--tracking-uri", server.uri)
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


@pytest.mark.e2e
def test_a_trial_rays_memory_monitor_kills_fails_out_of_memory_without_a_retry(tmp_path: Path, small_idc: Path) -> None:
    out = tmp_path / "out"
    search = {"trials": 2, "max_epochs": 2, "sampler": "random", "retrain": "none", "max_failures": 2}
    path = _experiment(tmp_path / "x.yaml", small_idc, out, search=search)
    # Any use of memory is over this threshold: the monitor kills each trial's worker as it runs.
    low = {"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"}
    result = subprocess.run(
        [*HARNESS, "sweep", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **low},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = _error_lines(result.stderr)
    assert re.fullmatch(r"error: every trial of sweep sweep-[\d-]+ failed \(2 out_of_memory\)", line)
    runs = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs([_experiment_id(out)])
    assert {r.info.status for r in runs} <= TERMINAL
    trials = [r for r in runs if r.data.tags["run_type"] == "trial"]
    assert len(trials) == 2
    for run in trials:
        assert (run.info.status, run.data.tags["failure_cause"]) == ("FAILED", "out_of_memory")
        assert run.data.tags["error"].startswith("MemoryMonitorKill: a worker was killed due to the node running low")
        assert "retries" not in run.data.tags
