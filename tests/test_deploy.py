"""deploy/ and docs/cluster.md: manifests shaped as Kubernetes expects, shell scripts that parse, and
only options that `harness sweep` / `harness server` / `harness close-orphans` have. Fast: no Ray,
no cluster, no network.

Nothing here runs a cluster: tests/sweep/test_cluster.py and test_single_host.py exercise the
hand-started set-up, tests/sweep/test_slurm.py the SLURM job."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"


def _cli_options(*commands: str) -> frozenset[str]:
    """Return the long options the real `harness` commands accept."""
    import typer

    from harness.cli import app

    group = typer.main.get_command(app)
    return frozenset(
        opt for name in commands for param in group.commands[name].params for opt in param.opts if opt.startswith("--")
    )


# Every option of `harness sweep` and `harness server` that the deploy files and the docs may pass.
ALLOWED_OPTIONS = _cli_options("sweep", "server", "close-orphans")

EXPECTED_FILES = [
    "README.md",
    "manual/start-head.sh",
    "manual/start-worker.sh",
    "manual/start-mlflow.sh",
    "manual/run-sweep.sh",
    "netns/start-cluster.sh",
    "netns/stop-cluster.sh",
    "slurm/sweep.sbatch",
    "slurm/submit.sh",
    "kuberay/Dockerfile",
    "kuberay/rayjob.yaml",
    "kuberay/mlflow.yaml",
]
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
SHELL_FILES = sorted([*DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.sbatch")])
TEXT_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())

HARNESS_COMMAND = re.compile(r"\bharness (?:sweep|server|close-orphans)\b")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _only(path: Path, kind: str) -> dict[str, Any]:
    found = [doc for doc in _documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"{_rel(path)}: expected one {kind}, found {len(found)}"
    return found[0]


def _logical_lines(lines: Iterable[str]) -> Iterator[str]:
    """Join backslash-continued lines, as the shell reads them."""
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _code_block_lines(markdown: str) -> Iterator[str]:
    inside = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            yield line


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _harness_commands(lines: Iterable[str]) -> list[str]:
    return [line for line in _logical_lines(lines) if HARNESS_COMMAND.search(line)]


def _commands_in(path: Path) -> list[str]:
    """Every `harness sweep`/`harness server` command line in a deploy file or the cluster docs:
    raw lines, and for YAML also the parsed strings (a folded entrypoint is one line only there)."""
    text = path.read_text()
    if path == CLUSTER_DOC:
        return _harness_commands(_code_block_lines(text))
    commands = _harness_commands(text.splitlines())
    if path.suffix == ".yaml":
        for doc in _documents(path):
            for value in _strings(doc):
                commands += _harness_commands(value.splitlines())
    return commands


def _pod_specs(ray_cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [ray_cluster["headGroupSpec"], *ray_cluster["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def _option_value(command: str, option: str) -> str:
    match = re.search(rf"{option}[ =](\S+)", command)
    assert match, f"{option} missing from: {command}"
    return match.group(1)


def test_deploy_holds_every_file_the_docs_name() -> None:
    missing = [name for name in EXPECTED_FILES if not (DEPLOY / name).is_file()]
    assert not missing, f"missing from deploy/: {missing}"
    assert CLUSTER_DOC.is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_document_is_a_kubernetes_object(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{_rel(path)} holds no document"
    for i, doc in enumerate(documents):
        assert isinstance(doc, dict), f"{_rel(path)} document {i} is a {type(doc).__name__}, not a mapping"
        for key in ("apiVersion", "kind"):
            assert isinstance(doc.get(key), str) and doc[key], f"{_rel(path)} document {i} has no {key}"
        assert doc.get("metadata", {}).get("name"), f"{_rel(path)} document {i} ({doc['kind']}) has no metadata.name"


def test_rayjob_runs_the_sweep_on_a_cluster_with_gpu_workers() -> None:
    job = _only(DEPLOY / "kuberay" / "rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entrypoint = " ".join(spec["entrypoint"].split())
    assert "harness sweep" in entrypoint
    assert _option_value(entrypoint, "--address") == "auto"
    assert _option_value(entrypoint, "--tracking-uri") == "http://mlflow:5000"
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"], "no worker group"
    gpu_limits = [
        container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        for group in cluster["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    ]
    assert any(gpu_limits), f"no worker container limits nvidia.com/gpu: {gpu_limits}"


def test_rayjob_keeps_storage_and_results_on_a_volume_every_pod_shares() -> None:
    path = DEPLOY / "kuberay" / "rayjob.yaml"
    claims = {doc["metadata"]["name"]: doc for doc in _documents(path) if doc["kind"] == "PersistentVolumeClaim"}
    job = _only(path, "RayJob")
    mounts = []
    for pod in _pod_specs(job["spec"]["rayClusterSpec"]):
        shared = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert shared, "a Ray pod mounts no PersistentVolumeClaim"
        for claim in shared.values():
            assert claim in claims, f"claim {claim!r} is not defined in {_rel(path)}"
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
        mounts.append(
            {
                (m["mountPath"], shared[m["name"]])
                for c in pod["containers"]
                for m in c.get("volumeMounts", [])
                if m["name"] in shared
            }
        )
    common = set.intersection(*mounts)
    assert common, f"head and workers mount no claim at the same path: {mounts}"

    entrypoint = " ".join(job["spec"]["entrypoint"].split())
    for option in ("--storage", "--output-dir"):
        value = _option_value(entrypoint, option)
        assert any(value.startswith(mount_path.rstrip("/") + "/") for mount_path, _ in common), (
            f"{option} {value} is not on the shared volume {common}"
        )


def test_mlflow_service_exposes_port_5000_of_the_server() -> None:
    path = DEPLOY / "kuberay" / "mlflow.yaml"
    service = _only(path, "Service")
    assert service["metadata"]["name"] == "mlflow"
    ports = {p["port"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
    assert 5000 in ports, f"Service mlflow exposes {sorted(ports)}"

    deployment = _only(path, "Deployment")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no pod of the Deployment"
    (container,) = template["spec"]["containers"]
    container_ports = {p["containerPort"] for p in container["ports"]} | {p.get("name") for p in container["ports"]}
    assert ports[5000] in container_ports, f"targetPort {ports[5000]} is no port of the mlflow container"

    command = " ".join(" ".join([*container.get("command", []), *container.get("args", [])]).split())
    assert "mlflow server" in command
    for option in ("--host 0.0.0.0", "--port 5000", "--artifacts-destination", "--backend-store-uri"):
        assert option in command, f"mlflow server runs without {option}: {command}"

    claims = {doc["metadata"]["name"] for doc in _documents(path) if doc["kind"] == "PersistentVolumeClaim"}
    used = {
        v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v
    }
    assert used and used <= claims, f"the Deployment mounts claims {used}, the file defines {claims}"


@pytest.mark.parametrize("path", SHELL_FILES, ids=_rel)
def test_shell_script_has_a_bash_shebang_and_parses(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("#!") and "bash" in first, f"{_rel(path)} starts with {first!r}"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"bash -n {_rel(path)}:\n{result.stderr}"


@pytest.mark.parametrize("path", SHELL_FILES, ids=_rel)
def test_shell_script_stops_at_the_first_error(path: Path) -> None:
    assert re.search(r"^set -euo pipefail$", path.read_text(), re.MULTILINE), f"{_rel(path)} lacks set -euo pipefail"


@pytest.mark.parametrize("name", ["netns/start-cluster.sh", "netns/stop-cluster.sh"])
def test_netns_scripts_print_their_usage_and_refuse_to_run_without_a_state_folder(name: str) -> None:
    helped = subprocess.run([str(DEPLOY / name), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: deploy/{name} --state DIR")
    bare = subprocess.run([str(DEPLOY / name)], capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2 and bare.stderr.startswith(f"usage: deploy/{name}")


def test_sbatch_directives_come_before_the_first_command() -> None:
    # sbatch stops reading #SBATCH lines at the first command: a directive after it is silently ignored.
    lines = (DEPLOY / "slurm" / "sweep.sbatch").read_text().splitlines()
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    assert directives and max(directives) < first_command


@pytest.mark.parametrize("name", ["manual/run-sweep.sh", "slurm/sweep.sbatch"])
def test_cluster_sweeps_name_the_cluster_the_server_and_shared_storage(name: str) -> None:
    sweeps = [c for c in _commands_in(DEPLOY / name) if re.match(r"\s*(exec\s+)?harness sweep\b", c)]
    assert len(sweeps) == 1, sweeps
    options = set(OPTION.findall(sweeps[0]))
    assert {"--address", "--tracking-uri", "--storage"} <= options, sweeps[0]


def test_option_check_follows_backslash_continuations() -> None:
    lines = ["harness sweep x.yaml --address auto \\", "  --no-such-option", "echo --unrelated"]
    (command,) = _harness_commands(lines)
    assert set(OPTION.findall(command)) - ALLOWED_OPTIONS == {"--no-such-option"}


@pytest.mark.parametrize(
    "name", ["manual/run-sweep.sh", "manual/start-mlflow.sh", "slurm/sweep.sbatch", "kuberay/rayjob.yaml"]
)
def test_option_check_sees_the_commands_of(name: str) -> None:
    assert any(OPTION.search(c) for c in _commands_in(DEPLOY / name)), f"no harness command with options in {name}"


def test_option_check_sees_the_commands_of_the_cluster_docs() -> None:
    commands = _commands_in(CLUSTER_DOC)
    assert any("harness sweep" in c and OPTION.search(c) for c in commands)
    assert any("harness server" in c and OPTION.search(c) for c in commands)


@pytest.mark.parametrize("path", [*TEXT_FILES, CLUSTER_DOC], ids=_rel)
def test_harness_commands_use_only_real_options(path: Path) -> None:
    unknown = sorted(
        {
            (option, command.strip())
            for command in _commands_in(path)
            for option in OPTION.findall(command)
            if option not in ALLOWED_OPTIONS
        }
    )
    assert not unknown, f"{_rel(path)} passes options harness does not have: {unknown}"
