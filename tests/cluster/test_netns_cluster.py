"""The namespaced cluster itself (every host at its own address, with its own Ray folder, nothing
left after it stops, also when it fails to start), and one sweep on it: fake GPUs, four 0.25-GPU
trials packed per GPU, trained on the CPU, logged to the PostgreSQL MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from harness import tracking
from tests.cluster.conftest import leftovers, require_netns
from tests.conftest import REPO, experiment_dict, write_experiment
from tools.netns_cluster import Host, NetnsCluster, list_namespaces, namespace_pids

TRIALS, EPOCHS = 8, 2


def _hosts(cluster: NetnsCluster) -> list[Host]:
    return [cluster.head, cluster.tracking, cluster.driver, *cluster.workers]


def test_every_host_has_its_own_address_and_ray_folder_and_the_head_sees_every_node(
    netns_cluster: NetnsCluster,
) -> None:
    hosts = _hosts(netns_cluster)
    assert len({h.address for h in hosts}) == len({h.namespace for h in hosts}) == len(hosts) == 5
    for host in hosts:
        shown = netns_cluster.run(host, ["ip", "-o", "-4", "addr", "show"], timeout=10).stdout
        assert f"inet {host.address}/24" in shown and shown.count("inet ") == 2, shown  # and 127.0.0.1
    # Nothing of the cluster in the machine's own namespace: no address, no route to the subnet.
    own = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    own += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert netns_cluster.subnet + "." not in own
    nodes = {n["NodeManagerAddress"]: n for n in netns_cluster.ray_nodes()}
    ray_hosts = [netns_cluster.head, *netns_cluster.workers, netns_cluster.driver]
    assert sorted(nodes) == sorted(h.address for h in ray_hosts)
    assert {a: n["Resources"].get("CPU", 0) for a, n in nodes.items()} == {
        netns_cluster.head.address: 0,
        netns_cluster.driver.address: 0,
        **{w.address: 2 for w in netns_cluster.workers},
    }
    temp_dirs = {h.address: str(netns_cluster.ray_temp_dir(h)) for h in ray_hosts}
    assert len(set(temp_dirs.values())) == len(ray_hosts)
    for address, node in nodes.items():
        assert Path(node["ObjectStoreSocketName"]).is_relative_to(temp_dirs[address])


def test_mlflow_answers_from_the_driver_host_and_its_store_from_this_process(netns_cluster: NetnsCluster) -> None:
    probe = "import sys, requests; print(requests.get(sys.argv[1] + '/health', timeout=10).text)"
    answer = netns_cluster.run(
        netns_cluster.driver, [sys.executable, "-c", probe, netns_cluster.tracking_uri], timeout=60
    )
    assert answer.stdout.strip() == "OK"
    with sqlalchemy.create_engine(netns_cluster.store_url).connect() as store:
        assert store.execute(sqlalchemy.text("select name from experiments")).scalars().all() == ["Default"]


def test_a_start_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_netns()
    seen: dict[str, list[int]] = {}

    def fail(cluster: NetnsCluster) -> None:
        # Every service has been started by now (some still starting): the teardown ends them all.
        for host in _hosts(cluster):
            seen[host.namespace] = namespace_pids(host.namespace)
        raise RuntimeError("injected")

    monkeypatch.setattr(NetnsCluster, "_wait_for_nodes", fail)
    cluster = NetnsCluster(tmp_path / "state", workers=1)
    with pytest.raises(RuntimeError, match="injected"):
        cluster.start()
    assert len(seen) == 4 and all(seen.values()), seen
    assert cluster._slot.namespace("sw") not in list_namespaces()
    assert not leftovers(cluster, list(seen), [p for pids in seen.values() for p in pids])


def test_the_deploy_scripts_start_a_cluster_run_a_command_on_a_host_and_stop_it(tmp_path: Path) -> None:
    require_netns()
    state, deploy = tmp_path / "state", REPO / "deploy" / "netns"
    env = {**os.environ, "HARNESS_VENV": str(Path(sys.executable).parents[1])}
    started = subprocess.run(
        [deploy / "start-cluster.sh", "--state", state, "--workers", "0"], env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stdout + started.stderr
    described = json.loads((state / "cluster.json").read_text())
    try:
        probe = "import sys, requests; print(requests.get(sys.argv[1] + '/health', timeout=10).text)"
        on_driver = [sys.executable, "-m", "tools.netns_cluster", "exec", "--state", str(state), "driver", "--"]
        answer = subprocess.run(
            [*on_driver, sys.executable, "-c", probe, described["tracking_uri"]],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert answer.stdout.strip() == "OK", answer.stderr
    finally:
        stopped = subprocess.run(
            [deploy / "stop-cluster.sh", "--state", state], env=env, capture_output=True, text=True
        )
    assert stopped.returncode == 0 and "cluster stopped" in stopped.stdout, stopped.stderr
    namespaces = [host["namespace"] for host in described["hosts"].values()]
    assert not set(namespaces) & set(list_namespaces())
    assert not Path(f"/proc/{described['pid']}").exists() and not (state / "cluster.json").exists()


# --- one sweep on fake GPUs ----------------------------------------------------------------------

# Polls Ray's accounting, from the driver host, until every fake GPU is taken (all 8 trials' 0.25
# shares placed at once) or the sweep is over; prints the lowest GPU count seen free.
PACKING_PROBE = """
import json, sys, time, ray
ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)
total, lowest, deadline = ray.cluster_resources().get("GPU", 0), None, time.monotonic() + float(sys.argv[2])
workers = [f"node:{address}" for address in sys.argv[3:]]
while time.monotonic() < deadline:
    free_now = ray.available_resources()
    # Ray leaves a node out of this view while its report is late, and a resource none of is free
    # out of it altogether: 0 counts only when every worker's own marker resource is in the view.
    if not all(marker in free_now for marker in workers):
        time.sleep(0.1)
        continue
    free = free_now.get("GPU", 0.0)
    lowest = free if lowest is None else min(lowest, free)
    if free == 0:
        break
    time.sleep(0.1)
print(json.dumps({"total": total, "lowest_free": lowest}))
"""


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Two workers each advertising one GPU that is not there, and 8 CPUs: CPUs for all 8 trials
    on either worker, so only the GPUs decide where they go."""
    require_netns()
    with NetnsCluster(tmp_path_factory.mktemp("gpu_cluster"), workers=2, worker_cpus=8, worker_gpus=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def gpu_sweep(
    gpu_cluster: NetnsCluster, tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path
) -> tuple[subprocess.CompletedProcess, dict]:
    """A sweep of 8 CancerNet trials asking {cpu: 1, gpu: 0.25}, all allowed at once, on the driver
    host; with what the packing probe saw while it ran."""
    tmp = tmp_path_factory.mktemp("gpu_sweep")
    data = experiment_dict(
        synthetic_idc,
        tmp / "results",
        name="netns-gpu",
        resources={"cpu": 1, "gpu": 0.25},
        search={
            "trials": TRIALS,
            "max_epochs": EPOCHS,
            "grace_period": EPOCHS,
            "sampler": "random",
            "seed": 0,
            "max_concurrent": TRIALS,
            "retrain": "none",
            "register_models": False,
        },
    )
    experiment = write_experiment(tmp / "gpu.yaml", data)
    addresses = [w.address for w in gpu_cluster.workers]
    argv = [sys.executable, "-c", PACKING_PROBE, gpu_cluster.ray_address, "600", *addresses]
    probe = gpu_cluster.popen(gpu_cluster.driver, argv, stdout=subprocess.PIPE, text=True)
    try:
        swept = gpu_cluster.sweep(experiment, timeout=900)
    finally:
        # A probe still polling has seen no full packing: its empty output fails the test.
        os.killpg(probe.pid, signal.SIGTERM)
        seen = probe.communicate(timeout=30)[0]
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    return swept, json.loads(seen) if seen.strip() else {}


def _trial_runs(store_url: str) -> dict[str, dict]:
    """Return each trial run of the store by run id: status, tags and per-epoch objective steps."""
    engine = sqlalchemy.create_engine(store_url)
    with engine.connect() as store:
        tags = store.execute(sqlalchemy.text("select run_uuid, key, value from tags")).all()
        runs = store.execute(sqlalchemy.text("select run_uuid, status from runs")).all()
        steps = store.execute(sqlalchemy.text("select run_uuid, step from metrics where key = 'objective'")).all()
    by_run: dict[str, dict] = {run: {"status": status, "tags": {}, "steps": []} for run, status in runs}
    for run, key, value in tags:
        by_run[run]["tags"][key] = value
    for run, step in steps:
        by_run[run]["steps"].append(step)
    return {run: r for run, r in by_run.items() if r["tags"].get(tracking.RUN_TYPE) == "trial"}


def test_four_quarter_gpu_trials_are_packed_per_fake_gpu_and_train_on_the_cpu(
    gpu_sweep: tuple[subprocess.CompletedProcess, dict], gpu_cluster: NetnsCluster
) -> None:
    swept, probe = gpu_sweep
    # Every GPU share reserved at once: the 8 trials' 0.25 reservations fill both fake GPUs (one per
    # worker, capacity 1), four on each.
    assert probe == {"total": 2.0, "lowest_free": 0.0}
    trials = _trial_runs(gpu_cluster.store_url).values()
    assert len(trials) == TRIALS
    for run in trials:
        tags = run["tags"]
        assert tags[tracking.ATTEMPTS] == "1" and "," not in tags[tracking.NODE_IDS]
        # Ray's grant and what the trial saw: the one GPU of its node, and no CUDA behind it.
        assert (tags[tracking.GPU_IDS], tags[tracking.CUDA_VISIBLE], tags[tracking.TRAINED_ON]) == ("0", "0", "cpu")
        assert tags[tracking.GPU_SHARE] == "0.25"
    # A trial ending early frees its quarter for a later one, on either worker: the split over the
    # whole sweep is not fixed, only where they ran.
    per_node = Counter(run["tags"][tracking.NODE_IP] for run in trials)
    assert set(per_node) <= {w.address for w in gpu_cluster.workers}
    # The trials' line about it reaches the driver's console through Ray (which folds repeats).
    said = swept.stdout + swept.stderr
    assert "Ray granted GPU 0 (CUDA_VISIBLE_DEVICES=0) but torch finds no CUDA device: training on the CPU" in said


def test_the_sweep_logs_every_epoch_of_every_trial_to_the_postgresql_store(
    gpu_sweep: tuple[subprocess.CompletedProcess, dict], gpu_cluster: NetnsCluster
) -> None:
    trials = _trial_runs(gpu_cluster.store_url)
    assert {r["status"] for r in trials.values()} == {"FINISHED"}
    steps = {r["tags"][tracking.TRIAL_ID]: sorted(r["steps"]) for r in trials.values()}
    assert steps == {trial: list(range(1, EPOCHS + 1)) for trial in steps}
    nodes = {n for r in trials.values() for n in r["tags"][tracking.NODE_IDS].split(",")}
    addresses = {w.address for w in gpu_cluster.workers}
    workers = {n["NodeID"] for n in gpu_cluster.ray_nodes() if n["NodeManagerAddress"] in addresses}
    # Only on the workers (the head and driver hosts have no CPU), not necessarily on both: Tune
    # hands a trial whichever quarter-GPU reservation is ready, and a reservation freed by an early
    # trial can take a later one, so on a loaded machine all eight have run on one worker (CI).
    assert len(workers) == 2 and nodes and nodes <= workers
