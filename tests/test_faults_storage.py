"""Faults of the storage a sweep resumes from: a disk that fills while files are written, and files
planted or damaged in Tune's storage path. Whatever the harness writes is whole or absent; what
`--resume` would read is checked first, and a damaged or foreign file is one line naming it, with
nothing loaded from it."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

import baselines
from harness import ray_compat, tracking
from harness.atomic import replacing, temporary_path, write_atomically
from harness.config import DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.errors import InputError
from harness.evaluation import mean_softmax
from harness.model_registry import ENSEMBLE_CODE, log_fold_model, log_served_model
from harness.run_spec import RunSpec
from harness.served_model import ClassProbabilities, InputRecipe, ServedFold, served_config
from harness.sweep._checkpoint import CHECKPOINT_FILE, FORMAT, TrialCheckpoint, load_checkpoint, save_checkpoint
from harness.sweep._search import read_searcher_state
from harness.train import EpochReport, TrainState, _restore_rng, fit
from tests.conftest import REPO
from tests.test_faults import (
    HARNESS,
    _all_terminal,
    _experiment,
    _long_experiment,
    _mount_tmpfs,
    _runs,
    _sweep_past_first_checkpoint,
)


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


def test_a_gpus_random_streams_go_through_the_checkpoint_and_are_restored_on_as_many_gpus(
    tmp_path: Path, prepared: PreparedData, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dropout on a GPU draws from the GPU's stream: a resume that restored only the CPU's would
    # train on other masks. This machine has no GPU: torch.cuda's calls stand in for one.
    gpu_streams = [torch.arange(16, dtype=torch.uint8)]
    state = _snapshots(_spec(prepared, epochs_max=1), 1)[1]
    assert state.rng["cuda"] == []  # written on the CPU
    save_checkpoint(
        tmp_path, TrialCheckpoint("run", dataclasses.replace(state, rng={**state.rng, "cuda": gpu_streams}), {})
    )
    loaded = load_checkpoint(tmp_path / CHECKPOINT_FILE).state
    assert loaded is not None
    set_on_gpus: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_on_gpus.append)
    loader = SimpleNamespace(generator=torch.Generator())
    for gpus in (1, 2):  # the same one GPU, then a machine with two: its own streams are kept
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        _restore_rng(loaded.rng, loader)  # type: ignore[arg-type]
    assert len(set_on_gpus) == 1 and torch.equal(set_on_gpus[0][0], gpu_streams[0])


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


def test_a_planted_or_cut_short_searcher_state_is_refused_by_name(tmp_path: Path) -> None:
    path, marker = tmp_path / "searcher-state.pkl", tmp_path / "executed"
    path.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(InputError, match="a pickle, not the JSON searcher state this harness writes; it was refused"):
        read_searcher_state(path)
    path.write_text('{"format": "histo-harness searcher state 1", "owner": {')
    with pytest.raises(InputError, match=r"the searcher state is incomplete \(cut short, as a full disk leaves one\)"):
        read_searcher_state(path)
    assert not marker.exists()


# ---- a real sweep, interrupted or on a full disk, resumed by a process of its own ----


@pytest.fixture(scope="module")
def storage_idc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-patient synthetic IDC tree, the size of the issue's reproductions."""
    return write_synthetic_idc(tmp_path_factory.mktemp("storage_idc"), patients=6, seed=4)


def _resume(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HARNESS, "sweep", str(path), "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _run_states(out: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Return each MLflow run's status and tags, by id."""
    return {r.info.run_id: (r.info.status, r.data.tags) for r in _runs(out)}


@dataclass(frozen=True)
class Interrupted:
    """A sweep stopped by Ctrl-C after its first checkpoint: its experiment file, output folder,
    Tune folder, and its runs as the interruption left them."""

    path: Path
    out: Path
    folder: Path
    runs: dict[str, tuple[str, dict[str, str]]]

    def newest(self, pattern: str) -> Path:
        """Return the file matching `pattern` that a restore would read."""
        found = ray_compat.newest(self.folder, pattern)
        assert found is not None, pattern
        return found

    def resumed_checkpoint(self) -> Path:
        """Return the checkpoint file that a restore hands back to a trial."""
        state = json.loads(self.newest(ray_compat.EXPERIMENT_STATE).read_text())
        folders = [f for f in ray_compat.resumed_checkpoints(state, self.folder) if f.is_dir()]
        assert folders, "the interrupted sweep left no checkpoint to resume from"
        return folders[0] / CHECKPOINT_FILE


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, storage_idc: Path) -> Interrupted:
    tmp = tmp_path_factory.mktemp("interrupted")
    out = tmp / "out"
    path = _long_experiment(tmp, storage_idc, out)
    driver = _sweep_past_first_checkpoint(path, out)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130, stderr[-3000:]
    (folder,) = (out / "faults" / "ray").glob("sweep-*")
    return Interrupted(path, out, folder, _run_states(out))


@contextmanager
def _replaced(path: Path, content: bytes) -> Iterator[None]:
    """Put `content` in file `path` for the block, then its own bytes back."""
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


def _assert_refused(interrupted: Interrupted, line: str) -> None:
    """Assert `--resume` exits 2 with `line` alone, and leaves every run as the interruption did."""
    result = _resume(interrupted.path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [line]
    assert "Traceback" not in result.stderr
    assert _run_states(interrupted.out) == interrupted.runs
    _all_terminal(interrupted.out)


@pytest.mark.e2e
def test_a_checkpoint_planted_in_the_storage_path_is_refused_on_resume_and_never_runs(
    interrupted: Interrupted, tmp_path: Path
) -> None:
    target, marker = interrupted.resumed_checkpoint(), tmp_path / "executed"
    planted = io.BytesIO()
    torch.save({"format": FORMAT, "run_id": _Planted(marker), "metrics": {}, "state": None}, planted)
    with _replaced(target, planted.getvalue()):
        _assert_refused(
            interrupted,
            f"error: --resume: {target}: holds pickled Python objects, not the plain data a trial checkpoint "
            "holds; it was refused without loading; nothing was resumed",
        )
    assert not marker.exists()


@pytest.mark.e2e
def test_a_searcher_state_planted_in_the_storage_path_is_refused_on_resume_and_never_runs(
    interrupted: Interrupted, tmp_path: Path
) -> None:
    target, marker = interrupted.newest(ray_compat.SEARCHER_STATE), tmp_path / "executed"
    with _replaced(target, pickle.dumps(_Planted(marker))):
        _assert_refused(
            interrupted,
            f"error: --resume: {target}: a pickle, not the JSON searcher state this harness writes; it was "
            "refused unread; nothing was resumed",
        )
    assert not marker.exists()


@pytest.mark.e2e
def test_a_cut_short_checkpoint_is_named_on_resume(interrupted: Interrupted) -> None:
    target = interrupted.resumed_checkpoint()
    with _replaced(target, target.read_bytes()[:1000]):
        _assert_refused(
            interrupted,
            f"error: --resume: {target}: the checkpoint is incomplete (cut short, as a full disk leaves one); "
            "nothing was resumed",
        )


@pytest.mark.e2e
def test_a_cut_short_experiment_state_is_named_with_the_complete_one_beside_it(interrupted: Interrupted) -> None:
    target = interrupted.newest(ray_compat.EXPERIMENT_STATE)
    whole = target.read_bytes()
    problem = f"error: --resume: {target}: Tune's experiment state is incomplete (cut short, as a full disk leaves one)"
    with _replaced(target, whole[: len(whole) // 2]):
        _assert_refused(interrupted, f"{problem} and no complete one lies beside it; nothing was resumed")
        older = interrupted.folder / "experiment_state-2000-01-01_00-00-00.json"
        older.write_bytes(whole)
        try:
            _assert_refused(
                interrupted,
                f"{problem}; move it aside to resume from the older {older.name} beside it; nothing was resumed",
            )
        finally:
            older.unlink()


@pytest.mark.e2e
def test_the_sweep_resumes_past_a_cut_short_checkpoint_tune_never_recorded(interrupted: Interrupted) -> None:
    """Last in this file: it resumes the shared sweep. A checkpoint folder newer than the one Tune's
    state names (its copy to storage failed on a full disk) is never read: the trial resumes from
    the last complete one."""
    named = interrupted.resumed_checkpoint()
    unrecorded = named.parent.with_name("checkpoint_000099")
    unrecorded.mkdir()
    (unrecorded / CHECKPOINT_FILE).write_bytes(b"")
    result = _resume(interrupted.path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(interrupted.out)
    assert {r.info.status for r in runs} == {"FINISHED"}
    trials = [r for r in runs if r.data.tags["run_type"] == "trial"]
    assert len(trials) == 2 and all(r.data.tags["outcome"] == "completed" for r in trials)


@pytest.mark.e2e
def test_a_full_disk_under_tune_storage_is_named_on_resume_once_there_is_room(
    tmp_path: Path, storage_idc: Path, tmpfs
) -> None:
    storage = tmpfs("1m")
    out = tmp_path / "out"
    path = _experiment(tmp_path / "x.yaml", storage_idc, out, storage_path=str(storage / "ray"))
    first = subprocess.run([*HARNESS, "sweep", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stderr[-3000:]
    (line,) = _error_lines(first.stderr)
    assert line.startswith("error: every trial of sweep sweep-") and line.endswith("failed (2 disk_full)")
    _all_terminal(out)
    # Room is made: the same files, on a larger disk.
    subprocess.run(["mount", "-o", "remount,size=100m", str(storage)], check=True)
    (folder,) = (storage / "ray").glob("sweep-*")
    state = ray_compat.newest(folder, ray_compat.EXPERIMENT_STATE)
    runs = _run_states(out)
    result = _resume(path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [
        f"error: --resume: {state}: Tune's experiment state is incomplete (cut short, as a full disk leaves one) "
        "and no complete one lies beside it; nothing was resumed"
    ]
    assert _run_states(out) == runs
    # What the harness writes itself is whole or absent.
    assert not list(storage.rglob("*.tmp"))


def test_registered_models_load_with_mlflows_pickle_loading_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold model is a torch.export program and the ensemble is logged from code: both load, and
    compute what the modules compute, with MLflow refusing every pickle."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tracking.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}").uri
    tracker = tracking.tracker_for(store)
    experiment = tracker.experiment_id("registry")
    assert experiment is not None
    params = TrainParams(input_size=48, batch_size=2)
    recipe = InputRecipe(params=params, stored_hw=(50, 50), bags=False, keras=False, batch_size=2, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 3), dtype=np.uint8)
    modules, models = [], {}
    for fold in (0, 1):
        run_id = tracker.start_run(experiment, name=f"fold {fold}", run_type=tracking.RunType.FOLD, tags={}, params={})
        modules.append(ClassProbabilities(baselines.create("cancernet", num_classes=2), params.normalisation).eval())
        # Fold 0 has one example image: its model still takes any batch size.
        models[fold] = log_fold_model(
            store, run_id, ServedFold(modules[-1], recipe, images[: fold + 1], recipe.model_inputs(images[: fold + 1]))
        )
    ensemble_run = tracker.start_run(
        experiment, name="ensemble", run_type=tracking.RunType.ENSEMBLE, tags={}, params={}
    )
    ensemble = log_served_model(store, ensemble_run, models, images[:2], ("non_idc", "idc"))
    inputs = torch.from_numpy(recipe.model_inputs(images))
    with torch.no_grad():
        expected = [m(inputs).numpy() for m in modules]
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    fold_model = mlflow.pytorch.load_model(models[0])
    with torch.no_grad():
        assert np.array_equal(fold_model(inputs).numpy(), expected[0])
    served = mlflow.pyfunc.load_model(ensemble).predict(images)
    assert np.array_equal(served[["non_idc", "idc"]].to_numpy(), mean_softmax(expected))


def test_the_ensemble_refuses_a_pickled_fold_model_unless_the_user_opts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickle put in a fold model's place in the artifact store is not loaded by default."""
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    params = TrainParams(input_size=48, batch_size=2)
    recipe = InputRecipe(params=params, stored_hw=(50, 50), bags=False, keras=False, batch_size=2, threads=1)
    module = ClassProbabilities(baselines.create("cancernet", num_classes=2), params.normalisation).eval()
    mlflow.pytorch.save_model(module, tmp_path / "fold_0", serialization_format="pickle", pip_requirements=[])
    mlflow.pyfunc.save_model(
        tmp_path / "ensemble",
        python_model=str(ENSEMBLE_CODE),
        artifacts={"fold_0": str(tmp_path / "fold_0")},
        model_config=served_config(recipe, ("non_idc", "idc")),
        pip_requirements=[],
    )
    with pytest.raises(MlflowException, match="Deserializing model using pickle is disallowed"):
        mlflow.pyfunc.load_model(str(tmp_path / "ensemble"))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    assert mlflow.pyfunc.load_model(str(tmp_path / "ensemble")) is not None
