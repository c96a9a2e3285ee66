"""Faults of the storage a sweep resumes from: a disk that fills while files are written, and files
planted or damaged in Tune's storage path. Whatever the harness writes is whole or absent; what
`--resume` would read is checked first, and a damaged or foreign file is one line naming it, with
nothing loaded from it."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from harness.atomic import replacing, temporary_path, write_atomically
from harness.config import DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.errors import InputError
from harness.run_spec import RunSpec
from harness.sweep._checkpoint import CHECKPOINT_FILE, FORMAT, TrialCheckpoint, load_checkpoint, save_checkpoint
from harness.train import EpochReport, TrainState, fit
from tests.test_faults import _mount_tmpfs


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the size asked (tmpfs("64k")) in the test's folder; returns its path.
    Unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        _mount_tmpfs(folder, f"size={size}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"old"
    assert not temporary_path(target).exists()


def test_an_atomic_write_on_a_full_disk_raises_enospc_and_leaves_the_old_file(tmpfs) -> None:
    small = tmpfs("64k")
    target = small / "state.json"
    write_atomically(target, b"old")
    with pytest.raises(OSError) as raised:
        write_atomically(target, b"\0" * 200_000)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in small.iterdir()) == ["state.json"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    manifest, _ = index_dataset(spec)
    return prepare(manifest, spec, ProtocolSpec(folds=3, test_fraction=0.25), tmp_path_factory.mktemp("work"))


def _spec(data: PreparedData, semantics: str = "source", **params: Any) -> RunSpec:
    defaults = dict(optimizer="adam", lr=1e-3, batch_size=32, epochs_max=3, input_size=48, augment="pis")
    return RunSpec(
        baseline="cancernet",
        params=TrainParams(**{**defaults, **params}),
        data=data,
        fold=0,
        max_epochs=3,
        seed=5,
        training=TrainingSpec(patience=5, semantics=semantics),
    )


def _assert_same(saved: Any, loaded: Any) -> None:
    """Assert `loaded` equals `saved` in value and type, all the way down."""
    assert type(loaded) is type(saved), (type(saved), type(loaded))
    if dataclasses.is_dataclass(saved):
        for field in dataclasses.fields(saved):
            _assert_same(getattr(saved, field.name), getattr(loaded, field.name))
    elif isinstance(saved, pd.DataFrame):
        pd.testing.assert_frame_equal(loaded, saved)
    elif isinstance(saved, torch.Tensor):
        assert saved.dtype == loaded.dtype and torch.equal(saved, loaded)
    elif isinstance(saved, np.ndarray):
        assert saved.dtype == loaded.dtype
        np.testing.assert_array_equal(loaded, saved)
    elif isinstance(saved, dict):
        assert list(saved) == list(loaded)
        for key in saved:
            _assert_same(saved[key], loaded[key])
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(loaded)
        for a, b in zip(saved, loaded):
            _assert_same(a, b)
    else:
        np.testing.assert_equal(loaded, saved)


def _snapshots(spec: RunSpec, epochs: int) -> dict[int, TrainState]:
    """Return the training state after each of the first `epochs` epochs of `spec`."""
    snapshots: dict[int, TrainState] = {}

    def keep(entry: EpochReport) -> None:
        snapshots[entry.epoch] = entry.snapshot()
        if entry.epoch == epochs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, keep)
    return snapshots


@pytest.mark.parametrize(
    ("semantics", "params"),
    [
        ("source", {"optimizer": "sgd", "lr_decay": "keras_time_based"}),
        ("source", {"optimizer": "adagrad", "lr_decay": "step", "lr_step_epochs": 1}),
        ("torch", {"optimizer": "adamw", "weight_decay": 1e-4}),
    ],
)
def test_a_checkpoint_holds_plain_data_and_loads_back_equal(
    tmp_path: Path, prepared: PreparedData, semantics: str, params: dict
) -> None:
    state = _snapshots(_spec(prepared, semantics, epochs_max=1, **params), 1)[1]
    saved = TrialCheckpoint("run", state, {"objective": np.float64(0.5), "epoch": 1, "mlflow_run_id": "run"})
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    _assert_same(dataclasses.replace(saved, metrics={**saved.metrics, "objective": 0.5}), loaded)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_a_run_resumed_from_a_loaded_checkpoint_matches_one_never_interrupted(
    tmp_path: Path, prepared: PreparedData
) -> None:
    # Augmentation, shuffling and dropout draw random numbers: every stream goes through the file.
    spec = _spec(prepared, epochs_max=2)
    straight = fit(spec)
    save_checkpoint(tmp_path, TrialCheckpoint("run", _snapshots(spec, 1)[1], {}))
    loaded = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert loaded.state is not None
    resumed = fit(spec, resume=loaded.state)
    assert [h.epoch for h in resumed.history] == [1, 2]
    np.testing.assert_equal([h.val for h in resumed.history], [h.val for h in straight.history])
    np.testing.assert_equal(resumed.test.metrics, straight.test.metrics)


class _Planted:
    """An object whose unpickling would create `marker`: what an attacker plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "planted",
            "holds pickled Python objects, not the plain data a trial checkpoint holds; it was refused without loading",
        ),
        ("empty", "the checkpoint is incomplete (cut short, as a full disk leaves one)"),
        ("truncated", "the checkpoint is incomplete (cut short, as a full disk leaves one)"),
        ("foreign", "not a trial checkpoint of this harness (expected format 'histo-harness trial checkpoint 1')"),
    ],
)
def test_a_checkpoint_that_is_not_whole_plain_data_is_refused_by_name(
    tmp_path: Path, content: str, problem: str
) -> None:
    path, marker = tmp_path / CHECKPOINT_FILE, tmp_path / "executed"
    if content == "planted":
        torch.save({"format": FORMAT, "run_id": _Planted(marker)}, path)
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "truncated":
        save_checkpoint(tmp_path, TrialCheckpoint("run", None, {"objective": 0.5}))
        path.write_bytes(path.read_bytes()[:300])
    else:
        torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(InputError) as raised:
        load_checkpoint(path)
    assert str(raised.value) == f"{path}: {problem}"
    assert not marker.exists()
