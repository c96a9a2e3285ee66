"""deploy/slurm on a real SLURM: Debian's slurmctld, slurmd and munged started on loopback in a
temporary folder (one node, this machine's CPUs), the project's own sbatch file submitted through
deploy/slurm/submit.sh with only its documented variables, and the sweep's runs read back from the
MLflow store it wrote. After a normal end, a `scancel` and the time limit's early SIGTERM, no
process, port, token or RUNNING run is left behind."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.data.datasets.idc import write_synthetic_idc
from tests.conftest import REPO, experiment_dict, free_port, listening, wait_for, write_experiment

pytestmark = pytest.mark.cluster
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol")
TERMINAL = {"FINISHED", "KILLED", "FAILED"}


def _slurm_conf(folder: Path, host: str) -> str:
    ctld, slurmd = free_port(), free_port()
    return f"""ClusterName=histo
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _start_daemons(folder: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    """Start munged, slurmctld and slurmd in the foreground, each in its own session."""
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge = [
        "munged", "--foreground", "--force", f"--socket={folder}/munge.socket", f"--key-file={key}",
        f"--log-file={folder}/munged.log", f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed",
    ]  # fmt: skip
    conf = env["SLURM_CONF"]
    commands = [munge, ["slurmctld", "-D", "-f", conf], ["slurmd", "-D", "-f", conf, "-N", "n1"]]
    daemons = []
    for command in commands:
        daemons.append(
            subprocess.Popen(
                command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )  # fmt: skip
        if command is munge:
            wait_for(lambda: (folder / "munge.socket").exists(), 30, "munged's socket")
    return daemons


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A one-node SLURM on 127.0.0.1; yields the environment its clients need (SLURM_CONF)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: Debian's slurm-wlm and munge (make test-cluster installs them)")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their user only when it runs as root; this test is not root")
    # munged's socket path must stay under 108 bytes: a short folder under /tmp.
    folder = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    (folder / "slurm.conf").write_text(_slurm_conf(folder, platform.node()))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    daemons = _start_daemons(folder, env)
    try:
        wait_for(lambda: _sinfo(env) == "idle", 60, "the SLURM node to be idle")
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, check=False)
        for daemon in reversed(daemons):
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _sinfo(env: dict[str, str]) -> str:
    done = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
    return done.stdout.strip()


def _job(env: dict[str, str], job: str) -> dict[str, str]:
    """Return `scontrol show job`'s fields of `job` (it keeps them for MinJobAge, 300 s, after the end)."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], env=env, capture_output=True, text=True)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def _submit(slurm: dict[str, str], tmp_path: Path, *, epochs: int, trials: int) -> tuple[str, dict[str, str]]:
    """Submit a one-baseline sweep through deploy/slurm/submit.sh; returns the job id and its variables."""
    root = write_synthetic_idc(tmp_path / "idc", patients=6, seed=5)
    search = {"trials": trials, "max_epochs": epochs, "grace_period": epochs, "sampler": "random", "retrain": "none"}
    experiment = write_experiment(
        tmp_path / "slurm_sweep.yaml",
        experiment_dict(
            tmp_path / "elsewhere", tmp_path / "unused", name="slurm_sweep", baselines=["cancernet"],
            search=search, protocol={"folds": 2, "test_fraction": 0.25, "seed": 0}, floors=[],
            training={"patience": epochs},
        ),
    )  # fmt: skip
    variables = {
        "SHARED_DIR": str(tmp_path / "shared"),
        "DATASET_ROOT": str(root),
        "RAY_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
    }
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        variables["HARNESS_VENV"] = sys.prefix
    submitted = subprocess.run(
        [str(REPO / "deploy" / "slurm" / "submit.sh"), str(experiment)],
        env={**slurm, **variables}, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submitted.stdout.split()[2].rstrip(";")
    return job, variables


def _ended(slurm: dict[str, str], job: str, timeout: float) -> dict[str, str]:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    wait_for(lambda: _job(slurm, job).get("JobState") in ended, timeout, f"job {job} to end")
    return _job(slurm, job)


def _processes_under(folder: Path) -> list[str]:
    """Return the command lines of live processes that name `folder` (the job's services and Ray)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in command and entry.name != str(os.getpid()):
            found.append(command)
    return found


def _assert_nothing_left(variables: dict[str, str], shared: Path) -> None:
    wait_for(lambda: not _processes_under(shared), 90, "the job's processes to end")
    assert not listening(int(variables["RAY_PORT"])), "Ray's port still answers"
    assert not listening(int(variables["MLFLOW_PORT"])), "the MLflow server's port still answers"
    assert not list(shared.glob(".ray-auth-token-*")), "the job's Ray token was left in SHARED_DIR"
    assert not list(REPO.glob("*.out")), "the job's log went into the checkout"


def _runs(shared: Path) -> list:
    client = MlflowClient(f"sqlite:///{shared / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slurm_sweep")
    return client.search_runs([experiment.experiment_id])


def _wait_for_a_trial(shared: Path, log: Path) -> None:
    wait_for(lambda: log.is_file() and "start cancernet" in log.read_text(), 300, "a trial to start")


def test_sbatch_runs_a_sweep_to_its_end_and_stops_everything(slurm: dict[str, str], tmp_path: Path) -> None:
    job, variables = _submit(slurm, tmp_path, epochs=2, trials=2)
    fields = _ended(slurm, job, 600)
    shared = Path(variables["SHARED_DIR"])
    log = (shared / "logs" / f"histo-sweep-{job}.out").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert "shutting down (exit status 0)" in log
    errors = [line for line in log.splitlines() if line.startswith(("srun: error", "slurmstepd"))]
    assert not errors, errors
    runs = _runs(shared)
    kinds = sorted(r.data.tags["run_type"] for r in runs)
    assert kinds == ["sweep", "trial", "trial"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags.get("ray_node_ip") for r in runs if r.data.tags["run_type"] == "trial"} == {"127.0.0.1"}
    _assert_nothing_left(variables, shared)


def test_scancel_ends_every_run_and_leaves_nothing_behind(slurm: dict[str, str], tmp_path: Path) -> None:
    job, variables = _submit(slurm, tmp_path, epochs=40, trials=12)
    shared = Path(variables["SHARED_DIR"])
    log = shared / "logs" / f"histo-sweep-{job}.out"
    _wait_for_a_trial(shared, log)
    subprocess.run(["scancel", job], env=slurm, check=True)
    assert _ended(slurm, job, 120)["JobState"] == "CANCELLED"
    _assert_nothing_left(variables, shared)
    runs = _runs(shared)
    assert {r.info.status for r in runs} <= TERMINAL, log.read_text()[-3000:]
    sweep = next(r for r in runs if r.data.tags["run_type"] == "sweep")
    assert sweep.info.status == "KILLED"


def test_the_time_limits_early_sigterm_interrupts_the_sweep_for_resume(slurm: dict[str, str], tmp_path: Path) -> None:
    """`#SBATCH --signal=B:TERM@300` sends SIGTERM to the batch shell alone; `scancel --batch` does
    the same now: the driver ends its runs KILLED (interrupted=SIGTERM) and the log says how to resume."""
    job, variables = _submit(slurm, tmp_path, epochs=40, trials=12)
    shared = Path(variables["SHARED_DIR"])
    log = shared / "logs" / f"histo-sweep-{job}.out"
    _wait_for_a_trial(shared, log)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=slurm, check=True)
    _ended(slurm, job, 300)
    _assert_nothing_left(variables, shared)
    text = log.read_text()
    assert "shutting down (exit status 143)" in text, text[-3000:]
    assert f"continue with: SHARED_DIR={shared} deploy/slurm/submit.sh" in text
    runs = _runs(shared)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    sweep = next(r for r in runs if r.data.tags["run_type"] == "sweep")
    assert (sweep.info.status, sweep.data.tags.get("interrupted")) == ("KILLED", "SIGTERM")
    assert sweep.data.tags.get("orphaned") is None
