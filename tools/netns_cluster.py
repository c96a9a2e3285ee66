"""Several hosts on one machine: a Ray head, Ray workers, the MLflow server (PostgreSQL backend) and
the sweep's driver, each in its own Linux network namespace with its own address.

One "switch" namespace holds a Linux bridge; every host is a namespace whose one veth (`eth0`) has
its peer in the switch namespace, enslaved to the bridge. Addresses come from 10.213.K.0/24 and are
set only inside the host namespaces: nothing is added to the machine's own namespace, and nothing
in the cluster can reach anything but the cluster. Every host is also its own PID namespace (a
small init process holds it), so it looks like a machine of its own: Ray finds only that host's
processes when a driver joins, and killing the init ends every process of the host. Needs root.

    with NetnsCluster(Path("/tmp/c"), workers=2) as cluster:
        cluster.sweep(Path("experiments/cluster_try.yaml"), "--root", "...", timeout=900)

usage: python -m tools.netns_cluster up|down --state DIR [--workers N ...]   (deploy/netns/)
       python -m tools.netns_cluster exec --state DIR HOST -- COMMAND ...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

from harness.locking import file_lock

BIN = Path(sys.executable).parent
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
# Owner records and the lock under which a cluster picks its subnet, shared by every cluster here.
REGISTRY = Path(tempfile.gettempdir()) / "netns-clusters"
SUBNET = "10.213.{slot}"
RAY_PORT, CLIENT_PORT, MLFLOW_PORT, PG_PORT = 6379, 10001, 5000, 5432
OBJECT_STORE = 512 * 1024**2
# Fixed host numbers on the subnet; workers take 11, 12, ...
HEAD_NUMBER, TRACKING_NUMBER, DRIVER_NUMBER, FIRST_WORKER = 1, 2, 3, 11
# What every process of the cluster runs with: Ray's token authentication, no usage reports, trials
# at the test's priority (harness/environment.py says why), MLflow offline.
BASE_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_worker_niceness": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
# An init for a host's PID namespace: it waits on its sleep, and bash reaps the orphans it inherits.
INIT = ["bash", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]


class NetnsUnavailable(RuntimeError):
    """This machine cannot run a namespaced cluster (not root, no `ip netns`, no PostgreSQL)."""


@dataclass(frozen=True)
class Host:
    """One host of the cluster: its name, its network namespace and its address there."""

    name: str
    namespace: str
    address: str


@dataclass
class _HostState:
    """What the cluster runs on one host: its PID namespace's init and the services started there."""

    init: subprocess.Popen
    init_pid: int = 0
    # name -> the process and the signal that ends it: PostgreSQL gets a fast shutdown (SIGINT), which
    # also frees its shared memory; anything else is killed, its host's init taking the rest.
    services: dict[str, tuple[subprocess.Popen, signal.Signals]] = field(default_factory=dict)


def ensure_netns_permitted() -> None:
    """Return when this machine can run a namespaced cluster; raise NetnsUnavailable with the reason."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (ip netns add)")
    for tool in ("ip", "nsenter", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"`{tool}` is not installed")
    if not (POSTGRES_BIN / "postgres").exists():
        raise NetnsUnavailable(f"PostgreSQL binaries not found in {POSTGRES_BIN} (apt-get install postgresql)")
    probe = f"nsprobe-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def _ip(*args: str) -> None:
    """Run `ip ARGS`; raises CalledProcessError with ip's message."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def list_namespaces() -> list[str]:
    """Return the names of the machine's network namespaces."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    """Return the pids of every process in `namespace` (none when it does not exist)."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split()]


def _start_time(pid: int) -> str | None:
    """Return a process's start time in clock ticks since boot (None when it is gone): with the pid,
    it tells a live owner from a later process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL every process in `namespace` until none is left (bounded)."""
    deadline = time.monotonic() + 15
    while (pids := namespace_pids(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _wait_gone(pids: set[int], timeout: float = 15.0) -> None:
    """Wait (bounded) until each of `pids` is gone, reaped too: a killed process leaves its
    namespace's list at once but lingers until its parent reaps it."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _delete_namespace(namespace: str) -> None:
    """Kill what runs in `namespace`, then delete it (its veth goes with it); absent is fine."""
    if namespace in list_namespaces():
        _kill_namespace_processes(namespace)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _records() -> list[tuple[str, int]]:
    """Return (prefix, number) of every owner record: the slots clusters of any prefix hold."""
    found = (re.match(r"^(.+)-(\d+)\.json$", p.name) for p in REGISTRY.iterdir())
    return [(m.group(1), int(m.group(2))) for m in found if m]


class _Slot:
    """A cluster's number K: its subnet 10.213.K.0/24 and its namespaces' names `<prefix><K>-<host>`.

    Taken under a machine-wide lock with an owner record (pid and its start time); a slot whose
    owner is gone is a dead run's, whose namespaces may be cleaned. Nothing else is touched.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.number = -1

    @property
    def owner_file(self) -> Path:
        """Return the file recording who owns this slot."""
        return REGISTRY / f"{self.prefix}-{self.number}.json"

    def namespace(self, host: str) -> str:
        """Return the namespace name of `host` in this slot."""
        return f"{self.prefix}{self.number}-{host}"

    def take(self, state_dir: Path) -> None:
        """Clean this prefix's dead slots, then take the lowest number no cluster of any prefix holds
        (so no two clusters here share a subnet); raises when none is left."""
        pattern = re.compile(rf"^{re.escape(self.prefix)}(\d+)-")
        with file_lock(REGISTRY / "slots.lock"):
            mine = {int(m.group(1)) for name in list_namespaces() if (m := pattern.match(name))}
            mine |= {n for prefix, n in _records() if prefix == self.prefix}
            for number in sorted(mine):
                if _Slot._dead(self.prefix, number):
                    _Slot._clean(self.prefix, number)
            # After the cleaning: every record's number, and this prefix's namespaces without one.
            used = {n for _, n in _records()} | {int(m.group(1)) for x in list_namespaces() if (m := pattern.match(x))}
            free = [n for n in range(1, 255) if n not in used]
            if not free:
                raise RuntimeError("no free subnet: 254 namespaced clusters are running on this machine")
            self.number = free[0]
            owner = {"pid": os.getpid(), "start": _start_time(os.getpid()), "state_dir": str(state_dir)}
            self.owner_file.write_text(json.dumps(owner))

    @staticmethod
    def _dead(prefix: str, number: int) -> bool:
        """Return True when slot `number` has an owner record whose process is gone."""
        record = REGISTRY / f"{prefix}-{number}.json"
        try:
            owner = json.loads(record.read_text())
        except (OSError, ValueError):
            return False  # no record: someone else's namespaces, never touched
        return _start_time(owner["pid"]) != owner["start"]

    @staticmethod
    def _clean(prefix: str, number: int) -> None:
        """Remove a dead run's namespaces (their processes first), Ray folders and owner record."""
        for name in list_namespaces():
            if name.startswith(f"{prefix}{number}-"):
                _delete_namespace(name)
        shutil.rmtree(Path(tempfile.gettempdir()) / f"{prefix}{number}", ignore_errors=True)
        (REGISTRY / f"{prefix}-{number}.json").unlink(missing_ok=True)

    def release(self) -> None:
        """Remove this slot's owner record (its namespaces are already gone)."""
        if self.number >= 0:
            self.owner_file.unlink(missing_ok=True)


class NetnsCluster:
    """A Ray cluster, an MLflow server on PostgreSQL and a driver host, each host in its own network
    namespace on one bridge. A context manager: leaving the block tears everything down."""

    def __init__(
        self,
        state_dir: Path,
        *,
        workers: int = 2,
        worker_cpus: int = 1,
        worker_gpus: int = 0,
        head_cpus: int = 0,
        prefix: str = "hh",
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.worker_count, self.head_cpus = workers, head_cpus
        self.worker_cpus, self.worker_gpus = worker_cpus, worker_gpus
        self._slot = _Slot(prefix)
        self._hosts: dict[str, _HostState] = {}
        self._created: list[str] = []  # namespaces this cluster made, switch first
        self._next_worker = 1
        self.head = self.tracking = self.driver = Host("", "", "")
        self.workers: list[Host] = []
        self._worker_env: dict[str, dict[str, str]] = {}
        self._spawned: list[subprocess.Popen] = []

    # --- addresses ---------------------------------------------------------------------------

    @property
    def subnet(self) -> str:
        """Return the cluster's /24 as 'a.b.c' (before start(): empty)."""
        return SUBNET.format(slot=self._slot.number) if self._slot.number >= 0 else ""

    @property
    def ray_address(self) -> str:
        """Return the head's GCS address, HEAD:6379."""
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def tracking_uri(self) -> str:
        """Return the MLflow server's URI as the other hosts reach it."""
        return f"http://{self.tracking.address}:{MLFLOW_PORT}"

    @property
    def store_url(self) -> str:
        """Return a SQLAlchemy URL of the MLflow PostgreSQL store, through its unix socket (which
        the machine's own namespace reaches: a socket file crosses network namespaces)."""
        return f"postgresql+psycopg://mlflow@/mlflow?host={self._pg_dir}&port={PG_PORT}"

    @property
    def _pg_dir(self) -> Path:
        # Beside the Ray folders, not in the state folder: PostgreSQL runs as `postgres`, which must
        # reach its folder through every folder above it, and pytest puts its temporary folders
        # back to mode 700 whenever a session starts, which would cut a running server off.
        return self._scratch / "pg"

    @property
    def _token(self) -> Path:
        return self.state_dir / "ray-token"

    @property
    def _scratch(self) -> Path:
        # The Ray nodes' folders and the PostgreSQL store. Ray's unix sockets live under --temp-dir
        # and a socket path has at most 107 bytes: a short folder of its own rather than the state
        # folder, which may lie deep in a test's tmp path.
        return Path(tempfile.gettempdir()) / f"{self._slot.prefix}{self._slot.number}"

    @property
    def slot_record(self) -> Path:
        """Return the file recording that this process owns the cluster's subnet and namespaces."""
        return self._slot.owner_file

    def ray_temp_dir(self, host: Host) -> Path:
        """Return the Ray --temp-dir of `host`'s node."""
        return self._scratch / host.name

    def log(self, name: str) -> Path:
        """Return the log file of the service `name` (in the state folder's logs/)."""
        return self.state_dir / "logs" / f"{name}.log"

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the namespaces and start every service, each answering before this returns
        (bounded waits); on any failure, or a signal, everything made so far is torn down."""
        ensure_netns_permitted()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for folder in (self.state_dir, self.state_dir / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._slot.take(self.state_dir)
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._write_token()
        self._make_switch()
        self.head = self._add_host("head", HEAD_NUMBER)
        self.tracking = self._add_host("tracking", TRACKING_NUMBER)
        self.driver = self._add_host("driver", DRIVER_NUMBER)
        self._start_postgres()
        self._start_mlflow()
        self._start_head_node()
        for _ in range(self.worker_count):
            self.workers.append(self._new_worker(None))
        self._start_driver_node()
        self._wait_for_nodes()
        self._wait_for_mlflow()

    def stop(self) -> None:
        """Stop every process, then delete every namespace (and so every veth) this cluster made,
        its Ray folders and its slot; idempotent."""
        pids = {pid for namespace in self._created for pid in namespace_pids(namespace)}
        for name in list(self._hosts):
            self._stop_host(name)
        for namespace in self._created:
            _kill_namespace_processes(namespace)
        self._reap()
        _wait_gone(pids)
        for namespace in reversed(self._created):
            _delete_namespace(namespace)
        self._created.clear()
        if self._slot.number >= 0:
            shutil.rmtree(self._scratch, ignore_errors=True)  # the PostgreSQL store goes with it
        self._slot.release()

    def _kill_all(self, host: Host) -> None:
        """SIGKILL every process of `host` at once, as a machine's power cut would; returns once
        each is gone and reaped."""
        pids = set(namespace_pids(host.namespace))
        _kill_namespace_processes(host.namespace)
        self._stop_host(host.name)  # reaps the services killed
        self._reap()
        _wait_gone(pids)

    def _reap(self) -> None:
        """Reap the processes popen() started that have ended (a caller may not have waited)."""
        self._spawned = [process for process in self._spawned if process.poll() is None]

    def _stop_host(self, name: str) -> None:
        """End a host's services, newest first, then its init, which takes every process left in its
        PID namespace with it."""
        state = self._hosts.pop(name, None)
        if state is None:
            return
        for process, first in reversed(state.services.values()):
            _end(process, first)
        _end(state.init, signal.SIGKILL)

    # --- namespaces --------------------------------------------------------------------------

    def _make_switch(self) -> None:
        switch = self._slot.namespace("sw")
        _ip("netns", "add", switch)
        self._created.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")

    def _add_host(self, name: str, number: int) -> Host:
        """Create `name`'s namespace, its veth on the bridge and its address; start its PID init."""
        host = Host(name=name, namespace=self._slot.namespace(name), address=f"{self.subnet}.{number}")
        switch = self._slot.namespace("sw")
        _ip("netns", "add", host.namespace)
        self._created.append(host.namespace)
        # Both ends are made inside the namespaces: the machine's own namespace never sees them.
        _ip("-n", switch, "link", "add", _port(name), "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("-n", switch, "link", "set", _port(name), "master", "br0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        self._start_init(host)
        return host

    def _start_init(self, host: Host) -> None:
        """Start the init of `host`'s PID namespace and note its pid as the machine sees it."""
        init = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *UNSHARE, *INIT],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self._hosts[host.name] = _HostState(init=init)
        children = Path(f"/proc/{init.pid}/task/{init.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = children.read_text().split() if children.exists() else []
            if found:
                self._hosts[host.name].init_pid = int(found[0])
                return
            time.sleep(0.02)
        raise RuntimeError(f"the PID namespace of {host.name} did not start")

    def link_down(self, host: Host) -> None:
        """Cut `host` off the network (its port on the bridge down); its processes keep running."""
        _ip("-n", self._slot.namespace("sw"), "link", "set", _port(host.name), "down")

    def link_up(self, host: Host) -> None:
        """Put `host` back on the network."""
        _ip("-n", self._slot.namespace("sw"), "link", "set", _port(host.name), "up")

    def kill_host(self, host: Host) -> None:
        """Lose `host` as a machine is lost: SIGKILL every process in its namespace, then delete the
        namespace and its veth. A worker leaves `workers`."""
        self._kill_all(host)
        _delete_namespace(host.namespace)
        if host.namespace in self._created:
            self._created.remove(host.namespace)
        self.workers = [w for w in self.workers if w != host]

    # --- processes ---------------------------------------------------------------------------

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Return the environment a process of the cluster runs with: this one's, the cluster's
        settings (Ray token), then `env`; the venv's commands first on PATH; never RAY_ADDRESS, so
        nothing joins another Ray, nor RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (the tests set it to 0 to
        keep their own Rays on loopback; at 0 `ray start --address` refuses to join a cluster)."""
        merged = {**os.environ, **BASE_ENV, "RAY_AUTH_TOKEN_PATH": str(self._token), **(env or {})}
        for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            merged.pop(name, None)
        return merged | {"PATH": f"{BIN}{os.pathsep}{merged.get('PATH', '')}"}

    def _enter(self, host: Host) -> list[str]:
        """Return the command prefix that runs a command on `host` (its network and PID namespace)."""
        pid = self._hosts[host.name].init_pid
        return ["nsenter", "--target", str(pid), "--net", "--pid", "--mount", "--"]

    def popen(
        self, host: Host, argv: list[str], *, env: dict[str, str] | None = None, **kw: object
    ) -> subprocess.Popen:
        """Start `argv` on `host` in a process group of its own; returns the Popen (the caller ends
        it, or stop() does with the host)."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen([*self._enter(host), *argv], env=self.environment(env), **kw)  # type: ignore[call-overload]
        self._spawned.append(process)
        return process

    def run(
        self, host: Host, argv: list[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run `argv` on `host` to its end (killed after `timeout` s); returns its captured output."""
        process = self.popen(host, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except BaseException:
            _end(process, signal.SIGKILL)
            raise
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def _service(
        self,
        host: Host,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        first: signal.Signals = signal.SIGKILL,
    ) -> subprocess.Popen:
        """Start a long-running service on `host`, its output in logs/<name>.log, ended by `first`."""
        with self.log(name).open("a") as log:
            process = self.popen(host, argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._hosts[host.name].services[name] = (process, first)
        return process

    # --- PostgreSQL and MLflow ---------------------------------------------------------------

    def _as_postgres(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root. setpriv execs (runuser would fork and stand between
        # the signals and the server).
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def _init_store(self) -> Path:
        """initdb a fresh PostgreSQL cluster in the scratch folder, open to the subnet; returns its
        data folder."""
        self._scratch.chmod(0o755)
        self._pg_dir.mkdir(exist_ok=True)
        shutil.chown(self._pg_dir, "postgres")
        data = self._pg_dir / "data"
        initdb = [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow"]
        subprocess.run(self._as_postgres(initdb), check=True, capture_output=True)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        return data

    def _start_postgres(self) -> None:
        """Start PostgreSQL on the tracking host (on its address, and a unix socket in the scratch
        folder), wait until it answers, and create the `mlflow` database."""
        data = self._init_store()
        at = ["-h", str(self._pg_dir), "-p", str(PG_PORT)]
        options = ["-c", f"listen_addresses={self.tracking.address}", "-p", str(PG_PORT), "-k", str(self._pg_dir)]
        server = [str(POSTGRES_BIN / "postgres"), "-D", str(data), *options, "-c", "max_connections=200"]
        postgres = self._service(self.tracking, "postgres", self._as_postgres(server), first=signal.SIGINT)
        deadline = time.monotonic() + 60
        while subprocess.run([str(POSTGRES_BIN / "pg_isready"), "-q", *at]).returncode != 0:
            if postgres.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {self.log('postgres')}")
            time.sleep(0.2)
        createdb = [str(POSTGRES_BIN / "createdb"), *at, "-U", "mlflow", "mlflow"]
        subprocess.run(self._as_postgres(createdb), check=True, capture_output=True)

    def _mlflow_argv(self) -> list[str]:
        store = f"postgresql+psycopg://mlflow@{self.tracking.address}:{PG_PORT}/mlflow"
        return [
            str(BIN / "harness"),
            "server",
            "--host",
            self.tracking.address,
            "--port",
            str(MLFLOW_PORT),
            "--workers",
            "1",
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(self.state_dir / "mlflow-artifacts"),
        ]

    def _start_mlflow(self) -> None:
        """Start `harness server` on the tracking host (it returns once /health answers there)."""
        self._service(self.tracking, "mlflow", self._mlflow_argv())

    def _wait_for_mlflow(self) -> None:
        """Wait until the MLflow server answers from the driver host, as trials and driver reach it."""
        probe = (
            "import sys, time, requests\n"
            "deadline = time.monotonic() + float(sys.argv[2])\n"
            "while True:\n"
            "    try:\n"
            "        if requests.get(sys.argv[1] + '/health', timeout=2).status_code == 200: break\n"
            "    except requests.RequestException:\n"
            "        pass\n"
            "    if time.monotonic() > deadline: sys.exit('no answer from ' + sys.argv[1])\n"
            "    time.sleep(0.5)\n"
        )
        self.run(self.driver, [sys.executable, "-c", probe, self.tracking_uri, "180"], timeout=200)

    def restart_tracking(self) -> None:
        """Stop the MLflow server and start it again (same address, port and store), answering."""
        server, _ = self._hosts[self.tracking.name].services.pop("mlflow")
        _end(server, signal.SIGTERM)
        self._start_mlflow()
        self._wait_for_mlflow()

    # --- Ray ---------------------------------------------------------------------------------

    def _write_token(self) -> None:
        if not self._token.exists():
            import secrets

            self._token.touch(mode=0o600)
            self._token.write_text(secrets.token_hex(32))

    def _ray_argv(self, host: Host, *options: str) -> list[str]:
        """Return `ray start` in the foreground (one process to own) for `host`'s node."""
        temp = self.ray_temp_dir(host)
        temp.mkdir(parents=True, exist_ok=True)
        # A small object store per node: trials pass results through it, not data, and each node's
        # default (30% of the machine's memory) would promise more memory than the machine has.
        node = ["--node-ip-address", host.address, "--temp-dir", str(temp), "--object-store-memory", str(OBJECT_STORE)]
        return [str(BIN / "ray"), "start", "--block", *node, *options]

    def _start_head_node(self) -> None:
        head = ["--head", "--port", str(RAY_PORT), "--ray-client-server-port", str(CLIENT_PORT)]
        argv = self._ray_argv(self.head, *head, "--include-dashboard=false", "--num-cpus", str(self.head_cpus))
        self._service(self.head, "ray-head", argv)
        self._wait_for_port(self.head, RAY_PORT, "the Ray head")

    def _join(self, host: Host, cpus: int, gpus: int, env: dict[str, str] | None) -> None:
        options = ["--address", self.ray_address, "--num-cpus", str(cpus), "--num-gpus", str(gpus)]
        self._service(host, f"ray-{host.name}", self._ray_argv(host, *options), env)

    def _start_driver_node(self) -> None:
        # `harness sweep --address HEAD:6379` attaches its driver to a Ray node on its own machine
        # (Ray looks for a local raylet). A node with no CPUs and no GPUs on the driver host is
        # that node: the driver's loop and its Optuna storage stay on the driver host, as on a
        # real cluster, where Ray Client (ray://) would move them to the head.
        self._join(self.driver, 0, 0, None)

    def _new_worker(self, env: dict[str, str] | None) -> Host:
        number = self._next_worker
        self._next_worker += 1
        host = self._add_host(f"worker{number}", FIRST_WORKER + number - 1)
        self._worker_env[host.name] = env or {}
        self._join(host, self.worker_cpus, self.worker_gpus, env)
        return host

    def add_worker(self, *, env: dict[str, str] | None = None) -> Host:
        """Start one more worker host (its Ray node with `env` added) and wait until it has joined."""
        host = self._new_worker(env)
        self.workers.append(host)
        self._wait_for_nodes()
        return host

    def kill_head(self) -> None:
        """SIGKILL every process of the head host (its namespace and address stay)."""
        self._kill_all(self.head)

    def start_head(self) -> None:
        """Start a new Ray head on the head host, then the Ray nodes of the workers and the driver
        host again (every process there ended first: they belonged to the old head), all joined."""
        self._start_init(self.head)
        self._start_head_node()
        for host in [*self.workers, self.driver]:
            self._kill_all(host)
            self._start_init(host)
        for worker in self.workers:
            self._join(worker, self.worker_cpus, self.worker_gpus, self._worker_env.get(worker.name))
        self._start_driver_node()
        self._wait_for_nodes()

    def ray_nodes(self) -> list[dict]:
        """Return the alive Ray nodes as the head lists them (ray.nodes(), from the driver host)."""
        return self._nodes(expected=[], timeout=60)

    def _wait_for_nodes(self) -> None:
        """Wait until the head, every worker and the driver host's node are alive."""
        expected = [self.head.address, *(w.address for w in self.workers), self.driver.address]
        self._nodes(expected=expected, timeout=120)

    def _nodes(self, *, expected: list[str], timeout: float) -> list[dict]:
        """Return alive nodes once every address in `expected` is among them (within `timeout`)."""
        script = (
            "import json, sys, time, ray\n"
            "ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)\n"
            "expected, deadline = set(sys.argv[3:]), time.monotonic() + float(sys.argv[2])\n"
            "while True:\n"
            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
            "    if expected <= {n['NodeManagerAddress'] for n in alive} or time.monotonic() > deadline: break\n"
            "    time.sleep(0.5)\n"
            "print(json.dumps(alive))\n"
        )
        argv = [sys.executable, "-c", script, self.ray_address, str(timeout), *expected]
        done = self.run(self.driver, argv, timeout=timeout + 60)
        alive = json.loads(done.stdout.strip().splitlines()[-1])
        missing = set(expected) - {n["NodeManagerAddress"] for n in alive}
        if missing:
            logs = self.state_dir / "logs"
            raise RuntimeError(f"Ray nodes at {sorted(missing)} did not join within {timeout:.0f} s; see {logs}")
        return alive

    def _wait_for_port(self, host: Host, port: int, what: str) -> None:
        """Wait until something listens on host:port, seen from `host` itself."""
        probe = (
            "import socket, sys, time\n"
            "deadline = time.monotonic() + 60\n"
            "while time.monotonic() < deadline:\n"
            "    try:\n"
            "        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.2)\n"
            "sys.exit(1)\n"
        )
        if self.run(host, [sys.executable, "-c", probe, host.address, str(port)], timeout=90, check=False).returncode:
            raise RuntimeError(f"{what} did not listen on {host.address}:{port}; see {self.state_dir / 'logs'}")

    def describe(self) -> dict:
        """Return what another process needs to use the running cluster: its hosts (namespace,
        address, the pid to nsenter), addresses, token and store."""
        hosts = [self.head, self.tracking, self.driver, *self.workers]
        return {
            "hosts": {h.name: {**asdict(h), "init_pid": self._hosts[h.name].init_pid} for h in hosts},
            "ray_address": self.ray_address,
            "tracking_uri": self.tracking_uri,
            "store_url": self.store_url,
            "ray_auth_token_path": str(self._token),
        }

    # --- the sweep ---------------------------------------------------------------------------

    def sweep(self, experiment: Path, *extra: str, timeout: float) -> subprocess.CompletedProcess:
        """Run `harness sweep EXPERIMENT --address HEAD:6379 --tracking-uri ... EXTRA` on the driver
        host; returns its captured output (whatever its exit code)."""
        argv = [str(BIN / "harness"), "sweep", str(experiment), "--address", self.ray_address]
        argv += ["--tracking-uri", self.tracking_uri, *extra]
        return self.run(self.driver, argv, timeout=timeout, check=False)


def _port(host: str) -> str:
    """Return the name of `host`'s veth end on the bridge (inside the switch namespace)."""
    return f"v-{host}"[:15]


def _end(process: subprocess.Popen, first: signal.Signals) -> None:
    """Send `first` to `process`'s group, SIGKILL it after 15 s, and reap it. A process already
    reaped is left alone: its group id may since belong to someone else."""
    if process.poll() is not None:
        return
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the command line (deploy/netns/start-cluster.sh and stop-cluster.sh) ---------------------

STATE_FILE = "cluster.json"


def _up(args: argparse.Namespace) -> int:
    """Start a cluster, write its description to STATE/cluster.json, and hold it until SIGTERM or
    Ctrl-C (this process owns it: were it killed, the next start would clean its namespaces)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    state = args.state.resolve()
    shape = {"workers": args.workers, "worker_cpus": args.worker_cpus, "worker_gpus": args.worker_gpus}
    with NetnsCluster(state, **shape, head_cpus=args.head_cpus, prefix=args.prefix) as cluster:
        described = {**cluster.describe(), "pid": os.getpid(), "start": _start_time(os.getpid())}
        (state / STATE_FILE).write_text(json.dumps(described, indent=2))
        try:
            print(f"Ray head {cluster.ray_address}, MLflow {cluster.tracking_uri}, store {cluster.store_url}")
            hosts = ", ".join(f"{h.name} {h.address}" for h in [cluster.head, cluster.tracking, cluster.driver])
            print(f"hosts: {hosts}, " + ", ".join(f"{w.name} {w.address}" for w in cluster.workers), flush=True)
            signal.pause()
        finally:
            (state / STATE_FILE).unlink(missing_ok=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    """Stop the cluster `up` holds for STATE (SIGTERM, then wait for it to tear everything down)."""
    state_file = args.state.resolve() / STATE_FILE
    if not state_file.exists():
        print(f"{state_file}: no cluster is running for this state folder")
        return 0
    owner = json.loads(state_file.read_text())
    if _start_time(owner["pid"]) == owner["start"]:
        os.kill(owner["pid"], signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _start_time(owner["pid"]) == owner["start"] and time.monotonic() < deadline:
            time.sleep(0.2)
        if _start_time(owner["pid"]) == owner["start"]:
            print(f"the cluster's process {owner['pid']} did not stop within {args.timeout:.0f} s", file=sys.stderr)
            return 1
    state_file.unlink(missing_ok=True)
    print("cluster stopped: its namespaces, links and processes are gone")
    return 0


def _exec(args: argparse.Namespace) -> int:
    """Run a command on one host of the cluster `up` holds for STATE; returns its exit code."""
    state_file = args.state.resolve() / STATE_FILE
    if not state_file.exists():
        print(f"{state_file}: no cluster is running for this state folder (start-cluster.sh)", file=sys.stderr)
        return 2
    described = json.loads(state_file.read_text())
    if args.host not in described["hosts"]:
        print(f"host {args.host!r}: expected one of {', '.join(described['hosts'])}", file=sys.stderr)
        return 2
    pid = described["hosts"][args.host]["init_pid"]
    env = {**os.environ, **BASE_ENV, "RAY_AUTH_TOKEN_PATH": described["ray_auth_token_path"]}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    enter = ["nsenter", "--target", str(pid), "--net", "--pid", "--mount", "--"]
    return subprocess.run([*enter, *command], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    """The `python -m tools.netns_cluster` command; returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m tools.netns_cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    up = commands.add_parser("up", help="start a cluster and hold it until SIGTERM or Ctrl-C")
    down = commands.add_parser("down", help="stop the cluster `up` holds for --state")
    run = commands.add_parser("exec", help="run a command on one host: exec --state DIR driver -- harness ...")
    for command in (up, down, run):
        command.add_argument("--state", type=Path, required=True, help="the cluster's state folder")
    up.add_argument("--workers", type=int, default=2, help="Ray worker hosts (default 2)")
    up.add_argument("--worker-cpus", type=int, default=1, help="CPUs each worker offers Ray (default 1)")
    up.add_argument("--worker-gpus", type=int, default=0, help="fake GPUs each worker offers Ray (default 0)")
    up.add_argument("--head-cpus", type=int, default=0, help="CPUs the head offers Ray (default 0)")
    up.add_argument("--prefix", default="hh", help="namespace name prefix (default hh)")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the teardown (default 60)")
    run.add_argument("host", help="head, tracking, driver, worker1, ...")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args(argv)
    try:
        ensure_netns_permitted()
    except NetnsUnavailable as exc:
        print(f"cannot run a namespaced cluster here: {exc}", file=sys.stderr)
        return 2
    return {"up": _up, "down": _down, "exec": _exec}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
