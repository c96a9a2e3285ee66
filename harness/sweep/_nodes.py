"""What a trial needs to know about the Ray node it landed on: who it is, where the prepared data
lies there, whether that data is the driver's, and which device to train on; and the driver's
check, before any trial starts, that every node of the cluster sees the driver's data."""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from harness.data.manifest import manifest_hash, read_manifest
from harness.data.prepare import PreparedData, manifests_beside
from harness.errors import InputError
from harness.tracking import CUDA_VISIBLE, GPU_IDS, TRAINED_ON

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
    for other in manifests_beside(path):
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
    cluster Ray is connected to that can run a trial (it has CPUs: every trial asks for some) reads
    other prepared data than the driver's: one task pinned to each, before any trial starts. Nodes
    joining later meet the same check in their trials. Returns nothing."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]
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


@dataclass(frozen=True)
class DevicePlacement:
    """The device a trial or fold task trains on, and the GPUs Ray granted it (none: no tags)."""

    device: str
    gpu_ids: tuple[str, ...] = ()
    visible_devices: str = ""

    def tags(self) -> dict[str, str]:
        """Return the run tags recording the grant and the device used (empty without a GPU grant)."""
        if not self.gpu_ids:
            return {}
        return {GPU_IDS: ",".join(self.gpu_ids), CUDA_VISIBLE: self.visible_devices, TRAINED_ON: self.device}


def device_placement(configured: str, node: NodeIdentity) -> DevicePlacement:
    """Return where to train: 'cuda' when Ray granted this task a GPU (and the experiment allows
    one) and torch finds CUDA, else 'cpu'.

    Under Ray a task uses only the GPUs it was granted, even when the node has more. A node may
    advertise GPUs it lacks (`ray start --num-gpus` on a machine without CUDA): the task then
    trains on the CPU, says so once per process, and its tags record the grant and the device.
    """
    if configured == "cpu" or not ray.is_initialized():
        return DevicePlacement("cpu" if configured == "cpu" else configured)
    granted = tuple(str(gpu) for gpu in ray.get_gpu_ids())
    if not granted:
        return DevicePlacement("cpu")
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if torch.cuda.is_available():
        return DevicePlacement("cuda", granted, visible)
    _say_no_cuda(node.label, ",".join(granted), visible)
    return DevicePlacement("cpu", granted, visible)


@functools.cache
def _say_no_cuda(node: str, granted: str, visible: str) -> None:
    """Log, once per process and grant, that a granted GPU has no CUDA behind it."""
    logging.getLogger(__name__).warning(
        "node %s: Ray granted GPU %s (CUDA_VISIBLE_DEVICES=%s) but torch finds no CUDA device: training on the CPU",
        node,
        granted,
        visible,
    )
