"""A trial checks, on its node, that it reads the data the driver indexed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import ray

from harness.config import DatasetSpec, ProtocolSpec
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.manifest import read_manifest, write_manifest
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.errors import InputError
from harness.sweep._nodes import (
    DATA_DIR_ENV,
    DataMismatchError,
    NodeIdentity,
    check_every_node,
    check_manifest,
    local_data,
)

NODE = NodeIdentity(node_id="ab" * 28, ip="10.0.0.7")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> tuple[Path, PreparedData]:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    work = tmp_path_factory.mktemp("driver") / "_data"
    return work, prepare(index_dataset(spec)[0], spec, ProtocolSpec(folds=3), work)


def test_paths_stay_put_unless_the_node_names_its_own_data_dir(data_dir, tmp_path: Path, monkeypatch) -> None:
    work, data = data_dir
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert local_data(data, work) == data
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "mnt"))
    moved = local_data(data, work)
    for path in ("manifest_path", "split_path", "cache_path"):
        assert getattr(moved, path) == tmp_path / "mnt" / getattr(data, path).relative_to(work), path
    assert moved.manifest_hash == data.manifest_hash


def test_a_node_with_the_same_manifest_passes_and_one_with_other_data_fails(data_dir, tmp_path: Path) -> None:
    _, data = data_dir
    digest, manifest = data.manifest_hash, data.manifest_path
    check_manifest(manifest, digest, NODE)
    copy = tmp_path / manifest.name
    frame, meta = read_manifest(manifest)
    write_manifest(frame.iloc[:-1], copy, root=Path(str(meta["root"])), meta=meta)
    with pytest.raises(
        DataMismatchError,
        match=rf"node 10.0.0.7 \(abababababab\) reads manifest hash [0-9a-f]{{16}} "
        rf"at {copy}, but the driver indexed {digest[:16]}",
    ):
        check_manifest(copy, digest, NODE)


def test_a_node_with_other_data_prepared_in_its_place_names_both_hashes(data_dir, tmp_path: Path) -> None:
    work, data = data_dir
    spec = DatasetSpec(name="idc", root=write_synthetic_idc(tmp_path / "other", patients=8, seed=2), allow_subset=True)
    other = prepare(index_dataset(spec)[0], spec, ProtocolSpec(folds=3), tmp_path / "node" / "_data")
    moved = data.moved(work, tmp_path / "node" / "_data")
    with pytest.raises(
        DataMismatchError,
        match=rf"node 10.0.0.7 \(abababababab\) reads manifest hash {other.manifest_hash[:16]} "
        rf"at {moved.manifest_path.parent}, but the driver indexed {data.manifest_hash[:16]}",
    ):
        check_manifest(moved.manifest_path, data.manifest_hash, NODE)


def test_a_node_without_the_data_says_where_it_looked(data_dir, tmp_path: Path) -> None:
    _, data = data_dir
    digest, manifest = data.manifest_hash, data.manifest_path
    missing = tmp_path / "elsewhere" / manifest.name
    with pytest.raises(DataMismatchError, match=rf"node 10.0.0.7 .*{missing}: manifest file not found.*{DATA_DIR_ENV}"):
        check_manifest(missing, digest, NODE)


@pytest.mark.cluster
def test_the_drivers_check_of_every_node_names_a_node_reading_other_data(data_dir, local_ray) -> None:
    work, data = data_dir
    check_every_node(data, work)
    other = dataclasses.replace(data, manifest_hash="0" * 64)
    node = ray.get_runtime_context().get_node_id()
    with pytest.raises(InputError) as refused:
        check_every_node(other, work)
    assert str(refused.value).startswith(f"node {ray.util.get_node_ip_address()} ({node[:12]}) reads manifest hash")
    assert f"{data.manifest_hash[:16]} at {data.manifest_path}, but the driver indexed {'0' * 16}" in str(refused.value)
