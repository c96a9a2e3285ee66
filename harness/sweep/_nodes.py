"""What a trial needs to know about the Ray node it landed on: who it is, where the prepared data
lies there, whether that data is the driver's, and which device to train on; and the driver's
check, before any trial starts, that every node of the cluster sees the driver's data."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from harness.data.manifest import manifest_hash, read_manifest
from harness.data.prepare import PreparedData
from harness.errors import InputError

# A node that mounts the driver's prepared-data folder (<output_dir>/_data) at another path sets this.
DATA_DIR_ENV = "HARNESS_DATA_DIR"
# How long the driver waits for every node to read its manifest. A node that has not answered by
# then (cut off, or still starting a worker) is left to the check each trial makes where it lands.
NODE_CHECK_SECONDS = 60.0


class DataMismatchError(RuntimeError):
    """The node's copy of the prepared data is missing or is not the data the driver indexed."""


@dataclass(frozen=True)
class NodeIdentity:
    """A Ray node's id and address, as recorded on every run trained there."""

    node_id: str
    ip: str

    @property
    def label(self) -> str:
        """Return 'ip (first 12 hex of the node id)'."""
        return f"{self.ip} ({self.node_id[:12]})"


def current_node() -> NodeIdentity:
    """Return the identity of the node this process runs on (hostname outside Ray)."""
    if not ray.is_initialized():
        return NodeIdentity(node_id="local", ip=socket.gethostname())
    return NodeIdentity(node_id=ray.get_runtime_context().get_node_id(), ip=ray.util.get_node_ip_address())


def local_data(data: PreparedData, driver_data_dir: Path) -> PreparedData:
    """Return `data`, prepared by the driver under `driver_data_dir`, where this node sees it."""
    local = os.environ.get(DATA_DIR_ENV)
    return data.moved(driver_data_dir, Path(local)) if local else data


def _hashes_beside(path: Path) -> list[str]:
    """Return the hashes of the manifests of `path`'s dataset in its folder (other prepared data)."""
    hashes = []
    for other in sorted(path.parent.glob(f"{path.stem.rsplit('-', 1)[0]}-*.parquet")):
        try:
            hashes.append(manifest_hash(read_manifest(other)[0]))
        except InputError:
            continue  # not a manifest this check can read: says nothing about the node's data
    return hashes


def check_manifest(path: Path, expected_hash: str, node: NodeIdentity) -> None:
    """Raise DataMismatchError unless the manifest at `path` (on this node) has `expected_hash`;
    where the node has other data prepared in its place, the error names their hashes."""
    hint = f"put the output_dir on a filesystem every node mounts, or set {DATA_DIR_ENV} on this node"
    try:
        found, where = [manifest_hash(read_manifest(path)[0])], path
    except InputError as exc:
        found, where = (_hashes_beside(path) if not path.exists() else []), path.parent
        if not found:
            raise DataMismatchError(f"node {node.label}: {exc}; {hint}") from None
    if found != [expected_hash]:
        raise DataMismatchError(
            f"node {node.label} reads manifest hash {', '.join(h[:16] for h in found)} at {where}, but the driver "
            f"indexed {expected_hash[:16]}: this node sees other data; {hint}"
        )


@ray.remote(num_cpus=0, max_retries=0)
def _node_data_fault(data: PreparedData, driver_data_dir: Path) -> str | None:
    """Return why this node's prepared data is not the driver's (None when it is), as a trial here
    would find it."""
    try:
        check_manifest(local_data(data, driver_data_dir).manifest_path, data.manifest_hash, current_node())
    except DataMismatchError as exc:
        return str(exc)
    return None


def _answer(check: ray.ObjectRef) -> str | None:
    """Return a node check's answer; None when its node died meanwhile (no trial lands there)."""
    try:
        return ray.get(check)
    except RayError:
        return None


def check_every_node(data: PreparedData, driver_data_dir: Path) -> None:
    """Raise InputError, one line naming the node and both manifest hashes, when a live node of the
    cluster Ray is connected to reads other prepared data than the driver's: one task pinned to
    each node, before any trial starts. Nodes joining later meet the same check in their trials.
    Returns nothing."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    checks = [
        _node_data_fault.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            data, driver_data_dir
        )
        for node in nodes
    ]
    answered, late = ray.wait(checks, num_returns=len(checks), timeout=NODE_CHECK_SECONDS)
    for check in late:
        ray.cancel(check, force=True)
    faults = [fault for fault in map(_answer, answered) if fault is not None]
    if faults:
        more = f" (and {len(faults) - 1} more node(s) like it)" if len(faults) > 1 else ""
        raise InputError(f"{faults[0]}{more}")


def trial_device(configured: str) -> str:
    """Return 'cuda' when Ray gave this trial a GPU (and the experiment allows one), else 'cpu'.

    Under Ray a trial uses only the GPUs it was granted, even when the node has more.
    """
    if configured == "cpu" or not ray.is_initialized():
        return "cpu" if configured == "cpu" else configured
    return "cuda" if ray.get_gpu_ids() else "cpu"
