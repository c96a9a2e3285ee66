"""The MLflow tracking server trials on every node log to: start one, and check one answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.errors import InputError
from harness.locking import sqlite_path


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise InputError naming `uri` when it is an HTTP tracking server that does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
        # /health skips MLflow's host check; the API does not, and refuses a host name it was not started
        # with. A server still starting (or busy) may answer one and time out on the other.
        search = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
        api = requests.get(search, params={"max_results": 1}, timeout=timeout) if response.status_code == 200 else None
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise InputError(
            f"--tracking-uri {uri}: MLflow tracking server cannot be reached ({reason}); "
            "start one with `harness server` or pass another URI"
        ) from None
    if response.status_code != 200:
        raise InputError(
            f"--tracking-uri {uri}: /health answered HTTP {response.status_code}, not an MLflow server that is up"
        )
    if api is not None and api.status_code == 403:
        raise InputError(
            f"--tracking-uri {uri}: the server refuses requests addressed to this host name; start it "
            "with --allowed-hosts naming it (harness server --allowed-hosts ...)"
        )


@dataclass
class ServerProcess:
    """A running `mlflow server` and the URI clients log to."""

    process: subprocess.Popen
    uri: str
    log: Path

    def stop(self) -> None:
        """Terminate the server and wait for it to exit."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def server_command(
    backend_store_uri: str,
    artifacts_destination: Path,
    host: str,
    port: int,
    workers: int,
    allowed_hosts: str | None = None,
) -> list[str]:
    """Return the `mlflow server` command line: the given backend, artifacts served through the server."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts_destination),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def server_environment() -> dict[str, str]:
    """Return the environment `mlflow server` runs with: this process's, with the harness's
    defaults for what the environment leaves unset."""
    defaults = {
        # MLflow 3 also starts ~8 job-runner processes (GenAI scorers, 250 MB each) that tracking
        # never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # SQLAlchemy's default pool (5 + 10 overflow per worker) answers a burst of trials with
        # "QueuePool limit reached" after 30 s (bench/tracking_load.py); 2 workers x 40 stays
        # within PostgreSQL's default 100 connections.
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "20",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "20",
    }
    return {**defaults, **os.environ}


def start_server(
    backend_store_uri: str,
    artifacts_destination: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    allowed_hosts: str | None = None,
    log: Path | None = None,
    wait_seconds: float = 180.0,
) -> ServerProcess:
    """Start `mlflow server` and return once /health answers (a new SQLite store migrates its schema
    first, which takes tens of seconds); raises RuntimeError with the log's tail if it never does."""
    database = sqlite_path(backend_store_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    artifacts_destination.mkdir(parents=True, exist_ok=True)
    log = log or artifacts_destination.parent / f"mlflow-server-{port}.log"
    process = subprocess.Popen(
        server_command(backend_store_uri, artifacts_destination, host, port, workers, allowed_hosts),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=server_environment(),
    )
    server = ServerProcess(process=process, uri=f"http://{host}:{port}", log=log)
    deadline = time.monotonic() + wait_seconds
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                check_reachable(server.uri, timeout=1.0)
                return server
            except InputError:
                time.sleep(0.5)
    except BaseException:
        server.stop()  # a signal or an error while it starts: no server is left behind
        raise
    server.stop()
    tail = "\n".join(log.read_text().splitlines()[-15:])
    raise RuntimeError(f"mlflow server on {host}:{port} did not answer /health; its log ({log}) ends:\n{tail}")
