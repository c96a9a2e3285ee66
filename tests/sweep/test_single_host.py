"""docs/cluster.md's single-host recipe, step by step: a Ray head started by hand on 127.0.0.1 as a
process of its own, `harness server`, a sweep of experiments/cluster_try.yaml joining the head with
`--address`, the leaderboard read back from the server, and a teardown that stops only what the
test started. Every service listens on loopback only."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from harness.data.datasets.idc import write_synthetic_idc
from tests.conftest import REPO, free_port, listening, wait_for

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _group_sockets(pgid: int) -> list[str]:
    """Return the local addresses the processes of group `pgid` listen on (TCP), from ss(8)."""
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    pids = {str(p) for p in _group_pids(pgid)}
    return [line.split()[3] for line in listing.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_single_host_recipe_runs_on_loopback_and_stops_only_what_it_started(tmp_path: Path) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss(8) from iproute2 is needed to read which interfaces the services listen on")
    shared = tmp_path / "shared"
    shared.mkdir()
    token = shared / "ray-auth-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray_port, mlflow_port = free_port(), free_port()
    # Ray's unix sockets live under its temp folder, whose path must stay short (108 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(ray_port),
         "--num-cpus", "2", "--dashboard-host", "127.0.0.1", "--temp-dir", str(ray_tmp)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [str(BIN / "harness"), "server", "--port", str(mlflow_port),
         "--backend-store-uri", f"sqlite:///{shared / 'mlflow' / 'mlflow.db'}",
         "--artifacts-destination", str(shared / "mlflow" / "artifacts")],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        wait_for(lambda: listening(ray_port), 120, "the Ray head")
        wait_for(lambda: _answers(f"{uri}/health"), 180, "the MLflow server")
        root = write_synthetic_idc(tmp_path / "idc", patients=8, seed=5)
        sweep = subprocess.run(
            [str(BIN / "harness"), "sweep", "experiments/cluster_try.yaml", "--root", str(root),
             "--address", f"127.0.0.1:{ray_port}", "--tracking-uri", uri,
             "--storage", str(shared / "ray"), "--output-dir", str(shared / "results")],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        ui = f"harness ui experiments/cluster_try.yaml --tracking-uri {uri}"
        assert f"look at it: {ui}" in " ".join(sweep.stdout.split())
        # Against a tracking server, `harness ui` saves the view and prints its address.
        opened = subprocess.run([str(BIN / "harness"), *ui.split()[1:]], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert opened.returncode == 0 and f"open {uri}/#/experiments/" in opened.stdout, opened.stderr[-2000:]
        board = subprocess.run(
            [str(BIN / "harness"), "leaderboard", "cluster_try", "--tracking-uri", uri,
             "--output-dir", str(shared / "results"), "--no-html"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert board.returncode == 0, board.stderr[-3000:]
        summary = pd.read_csv(shared / "results" / "cluster_try" / "summary.csv")
        assert set(summary.model) == {"cancernet", "idc_cnn"}
        assert set(summary.trials) == {6}
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("cluster_try").experiment_id])
        assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
        assert {r.data.tags.get("ray_node_ip") for r in runs if r.data.tags.get("run_type") == "trial"} == {"127.0.0.1"}
        for group in (head.pid, server.pid):
            addresses = _group_sockets(group)
            assert addresses, f"process group {group} listens nowhere"
            assert all(a.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")) for a in addresses), addresses
        assert not list((tmp_path).glob("results")), "the leaderboard wrote into the working directory"
    finally:
        _stop(server)
        _stop(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wait_for(lambda: not _group_pids(head.pid) and not _group_pids(server.pid), 60, "the services to stop")
