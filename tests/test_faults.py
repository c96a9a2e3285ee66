"""Faults a hostile but realistic user meets: bad paths, full and read-only disks, signals, a killed
driver, diverging trials, two sweeps at once, odd colour modes and masks. Each case runs the real
command on real files and checks the exit code, the one line it prints, and that every MLflow run
it left is in a terminal state. Cases about processes (a signal, a killed driver, two drivers at
once) run the command as a process of its own; the others run it in this process, as the `harness`
entry point would, without paying for a new interpreter each time."""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.config import load_experiment
from harness.data.datasets.idc import write_synthetic_idc
from harness.errors import InputError
from harness.experiment import set_up
from harness.preflight import check_store, optuna_store
from harness.sweep._driver import new_sweep_folder
from harness.sweep._orphans import driver_identity
from harness.sweep._record import write_record
from harness.tracking import RunType
from tests.conftest import REPO, experiment_dict, wait_for, write_experiment

HARNESS = [sys.executable, "-m", "harness"]
TERMINAL = {"FINISHED", "KILLED", "FAILED"}


@pytest.fixture(scope="module")
def small_idc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-patient synthetic IDC tree, the size of the issue's reproductions."""
    return write_synthetic_idc(tmp_path_factory.mktemp("faults_idc"), patients=6, seed=4)


def _experiment(path: Path, root: Path, out: Path, **sections) -> Path:
    data = experiment_dict(
        root,
        out,
        name="faults",
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 8}}],
        search={"trials": 2, "max_epochs": 2, "grace_period": 2, "sampler": "random", "retrain": "none"},
        floors=[],
    )
    data.update(sections)
    return write_experiment(path, data)


def _long_experiment(tmp_path: Path, root: Path, out: Path) -> Path:
    """Two trials of six epochs, never stopped early: time to act on a sweep after its first
    checkpoint."""
    search = {"trials": 2, "max_epochs": 6, "grace_period": 6, "sampler": "random", "retrain": "none"}
    return _experiment(tmp_path / "x.yaml", root, out, search=search, training={"patience": 6})


def _sweep_past_first_checkpoint(path: Path, out: Path, *args: str, **popen) -> subprocess.Popen:
    """Start `harness sweep PATH ARGS` as a process of its own (stdout and stderr piped, text,
    unless `popen` says otherwise) and return it once a trial has saved a checkpoint under `out`."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    driver = subprocess.Popen([*HARNESS, "sweep", str(path), *args], cwd=REPO, **options)
    wait_for(lambda: any((out / "faults" / "ray").rglob("checkpoint_*")), timeout=300, what="a trial checkpoint")
    return driver


@dataclass(frozen=True)
class Ran:
    """What a command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def _harness(*args: str) -> Ran:
    """Run `harness ARGS` in this process."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def _process(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `harness ARGS` as a process of its own."""
    return subprocess.run([*HARNESS, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _error_lines(result: Ran) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _runs(out: Path, experiment: str = "faults") -> list:
    database = out / "mlflow.db"
    if not database.exists():
        return []
    # Under the store's lock, as the harness opens it: a command running beside may be creating it.
    client = tracking.open_store(f"sqlite:///{database}").client
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _all_terminal(out: Path) -> None:
    states = {r.info.run_name: r.info.status for r in _runs(out)}
    assert set(states.values()) <= TERMINAL, states


def test_output_dir_under_a_regular_file_is_one_line_and_creates_nothing(tmp_path: Path, small_idc: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = _experiment(tmp_path / "x.yaml", small_idc, blocker / "results")
    result = _harness("sweep", str(path))
    assert result.returncode == 2
    assert _error_lines(result) == [f"error: output_dir {blocker / 'results'}: {blocker} is a file, expected a folder"]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "x.yaml"]


def test_output_dir_under_proc_is_one_line(tmp_path: Path, small_idc: Path) -> None:
    path = _experiment(tmp_path / "x.yaml", small_idc, Path("/proc/harness-results"))
    result = _harness("train", str(path), "--baseline", "cancernet")
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert line.startswith("error: output_dir /proc/harness-results: cannot write in /proc (")


def test_index_out_naming_a_folder_is_one_line(tmp_path: Path, small_idc: Path) -> None:
    result = _harness("data", "index", "--root", str(small_idc), "--allow-subset", "--out", str(tmp_path))
    assert result.returncode == 2
    assert _error_lines(result) == [f"error: --out {tmp_path}: is a folder, expected a file name"]


def _mount_tmpfs(folder: Path, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this sandbox cannot mount a tmpfs: {done.stderr.decode().strip()}")


@pytest.fixture()
def mounts():
    mounted: list[Path] = []
    yield mounted
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_read_only_storage_path_stops_before_any_run(tmp_path: Path, small_idc: Path, mounts) -> None:
    frozen = tmp_path / "ro"
    _mount_tmpfs(frozen, "ro,size=10m")
    mounts.append(frozen)
    out = tmp_path / "out"
    path = _experiment(tmp_path / "x.yaml", small_idc, out, storage_path=str(frozen / "ray"))
    result = _harness("sweep", str(path))
    assert result.returncode == 2
    assert _error_lines(result) == [
        f"error: storage_path {frozen / 'ray'}: cannot write in {frozen} (the filesystem is read-only)"
    ]
    assert _runs(out) == []


def test_a_disk_too_small_for_the_cache_is_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, small_idc: Path, mounts
) -> None:
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=1m")
    mounts.append(small)
    (small / "filler").write_bytes(b"\0" * 900_000)
    path = _experiment(tmp_path / "x.yaml", small_idc, small / "results")
    result = _harness("sweep", str(path))
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert line.startswith(f"error: patch cache in {small / 'results' / '_data' / 'cache'}: needs ")
    assert "MB free" in line
    assert not list(small.rglob("*.tmp"))
    _all_terminal(small / "results")


def test_reserving_a_cache_on_a_full_disk_raises_enospc_instead_of_sigbus(tmp_path: Path, mounts) -> None:
    from harness.data.cache import ReservedRows

    small = tmp_path / "small"
    _mount_tmpfs(small, "size=1m")
    mounts.append(small)
    with pytest.raises(OSError) as raised:
        ReservedRows(small / "big.npy", (400, 50, 50, 3))
    assert raised.value.errno == 28


@pytest.mark.e2e
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_after_the_first_checkpoint_ends_every_run_killed(
    tmp_path: Path, small_idc: Path, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    driver = _sweep_past_first_checkpoint(path, out)
    driver.send_signal(signum)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == code
    assert f"interrupted; continue with: harness sweep {path} --resume" in stderr
    assert "Tuner.restore" not in stdout + stderr
    runs = _runs(out)
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags.get("interrupted") for r in runs} == {signal.Signals(signum).name}
    assert {r.data.tags.get("outcome") for r in runs} == {"interrupted"}


def test_a_diverging_trial_fails_at_once_and_an_all_failed_sweep_exits_1(
    tmp_path: Path, small_idc: Path, local_ray: None
) -> None:
    out = tmp_path / "out"
    path = _experiment(
        tmp_path / "x.yaml",
        small_idc,
        out,
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 8, "lr": 1.0e30}}],
        search={"trials": 2, "max_epochs": 2, "sampler": "random", "retrain": "none", "max_failures": 2},
    )
    result = _harness("sweep", str(path))
    assert result.returncode == 1
    assert _error_lines(result)[-1].startswith("error: every trial of sweep sweep-")
    assert _error_lines(result)[-1].endswith("failed (2 diverged)")
    trials = [r for r in _runs(out) if r.data.tags["run_type"] == "trial"]
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FAILED"
        assert (run.data.tags["failure_cause"], run.data.tags["outcome"]) == ("diverged", "failed")
        assert run.data.tags["attempts"] == "1"  # never retried
        error = run.data.tags["error"]
        assert error.startswith("DivergedError: training loss became nan at epoch 1")
        assert "\x1b[" not in error
    _all_terminal(out)


@pytest.mark.e2e
def test_two_sweeps_started_together_on_a_new_store_both_succeed(tmp_path: Path, small_idc: Path) -> None:
    out = tmp_path / "out"
    paths = [
        _experiment(
            tmp_path / f"{name}.yaml",
            small_idc,
            out,
            name=name,
            search={"trials": 1, "max_epochs": 1, "retrain": "none"},
        )
        for name in ("first", "second")
    ]
    drivers = [
        subprocess.Popen(
            [*HARNESS, "sweep", str(p)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for p in paths
    ]
    results = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [r[1][-2000:] for r in results]
    for name in ("first", "second"):
        assert {r.info.status for r in _runs(out, name)} == {"FINISHED"}
    # A new store and an embedded Ray, without --verbose: none of the libraries' notices.
    for stdout, stderr in results:
        assert not [line for line in (stdout + stderr).splitlines() if any(n in line for n in LIBRARY_NOTICES)]


# What MLflow, Ray, Tune and torch (through albumentations) print unless `harness --verbose`.
LIBRARY_NOTICES = (
    "INFO mlflow",  # "Creating initial MLflow database tables...", "Validating input example ..."
    "INFO alembic",
    "Token authentication is enabled for this Ray cluster",
    "To visualize your results with TensorBoard",
    "Configuration for experiment",
    "The given NumPy array is not writable",
)


def _idc_copy_with(tmp_path: Path, root: Path, mode: str) -> tuple[Path, Path]:
    copy = tmp_path / "idc"
    shutil.copytree(root, copy)
    target = sorted(copy.rglob("*.png"))[0]
    Image.open(target).convert(mode).save(target)
    return copy, target


@pytest.mark.parametrize(("mode", "rule"), [("L", "grey replicated to three channels"), ("RGBA", "alpha dropped")])
def test_a_non_rgb_patch_is_reported_by_path_or_refused_with_strict(
    tmp_path: Path, small_idc: Path, mode: str, rule: str
) -> None:
    root, odd = _idc_copy_with(tmp_path, small_idc, mode)
    index = ["data", "index", "--root", str(root), "--allow-subset", "--out", str(tmp_path / "m.parquet")]
    result = _harness(*index)
    assert result.returncode == 0
    warnings = " ".join(result.stderr.split())
    assert f"{odd}: colour mode {mode}, not RGB; {rule} in the cache" in warnings
    assert f"1 of {len(list(root.rglob('*.png'))):,} images are not RGB (1 {mode})" in warnings
    assert f"mode_{mode}" in result.stdout
    strict = _harness(*index, "--strict")
    assert strict.returncode == 2
    assert "1 image(s) are not RGB" in strict.stderr and str(odd) in strict.stderr


def test_an_rgb_mask_with_unequal_channels_is_refused_by_path(tmp_path: Path, synthetic_bach) -> None:
    root, masks = synthetic_bach
    copy = tmp_path / "masks"
    shutil.copytree(masks, copy)
    mask = sorted(copy.glob("*.png"))[0]
    grey = np.asarray(Image.open(mask).convert("L"))
    Image.fromarray(np.stack([grey, np.zeros_like(grey), grey], -1)).save(mask)
    index = ["data", "index", "--dataset", "bach", "--root", str(root), "--roi-dir", str(copy), "--allow-subset"]
    result = _harness(*index, "--out", str(tmp_path / "m.parquet"))
    assert result.returncode == 2
    assert f"RoI mask {mask}: is RGB with unequal colour channels" in " ".join(result.stderr.split())
    Image.fromarray(np.stack([grey] * 3, -1)).save(mask)
    accepted = _harness(*index, "--out", str(tmp_path / "m.parquet"))
    assert accepted.returncode == 0, accepted.stderr[-2000:]


@pytest.mark.e2e
def test_a_killed_driver_leaves_orphans_that_the_next_sweep_ends_and_the_leaderboard_ignores(
    tmp_path: Path, small_idc: Path
) -> None:
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    driver = _sweep_past_first_checkpoint(
        path, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    orphans = {r.info.run_id for r in _runs(out) if r.info.status == "RUNNING"}
    assert orphans
    short = _experiment(tmp_path / "x.yaml", small_idc, out, search={"trials": 1, "max_epochs": 1, "retrain": "none"})
    result = _harness("sweep", str(short))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "died without ending it" in " ".join(result.stdout.split())
    runs = {r.info.run_id: r for r in _runs(out)}
    for run_id in orphans:
        assert runs[run_id].info.status == "KILLED"
        assert runs[run_id].data.tags["orphaned"] == "true" and runs[run_id].data.tags["outcome"] == "orphaned"
    _all_terminal(out)
    board = _harness("leaderboard", "faults", "--output-dir", str(out), "--no-html")
    assert board.returncode == 0, board.stderr[-2000:]
    summary = pd.read_csv(out / "faults" / "summary.csv")
    # The new sweep's one trial: the orphaned ones are not counted.
    assert summary.loc[summary.model == "cancernet", "trials"].item() == 1


def test_close_orphans_ends_the_runs_of_a_dead_driver_and_spares_a_live_one(tmp_path: Path, small_idc: Path) -> None:
    """What the SLURM job runs after it had to kill its driver: the store alone, no sweep."""
    out = tmp_path / "out"
    path = _experiment(tmp_path / "x.yaml", small_idc, out)
    tracker = tracking.open_store(f"sqlite:///{out / 'mlflow.db'}")
    experiment_id = tracker.experiment_id("faults")
    # No process started at tick 0: that identity names a driver that is gone.
    drivers = {"dead": f"{platform.node()}:{os.getpid()}:0", "live": driver_identity()}
    runs = {}
    for which, identity in drivers.items():
        sweep = tracker.start_run(
            experiment_id, name=which, run_type=RunType.SWEEP, tags={"driver": identity}, params={}
        )
        trial = tracker.start_run(
            experiment_id, name=f"{which}-trial", run_type=RunType.TRIAL, tags={}, params={}, parent=sweep
        )
        runs[which] = (sweep, trial)
    result = _harness("close-orphans", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    printed = " ".join(result.stdout.split())
    assert "dead: its driver" in printed and "1 run(s) under it are ended KILLED" in printed
    states = {r.info.run_id: (r.info.status, r.data.tags.get("orphaned")) for r in _runs(out)}
    assert [states[run] for run in runs["dead"]] == [("KILLED", "true")] * 2
    assert [states[run] for run in runs["live"]] == [("RUNNING", None)] * 2
    again = _harness("close-orphans", str(path))
    assert "faults: no sweep left RUNNING by a dead driver on this host" in " ".join(again.stdout.split())


def _ended_sweep(tmp_path: Path, root: Path, out: Path, *, status: str, driver: str | None = None) -> tuple[Path, str]:
    """Leave what a sweep whose parent run is `status` leaves behind: the run in the store and the
    sweep's folder with the harness's record; returns the experiment file and the parent run id.
    Tune's own state is a stand-in of no trial: every case here is refused before Tune reads it."""
    path = _experiment(tmp_path / "x.yaml", root, out)
    config = load_experiment(path)
    setup = set_up(config, sweep=True)
    parent = setup.tracker.start_run(
        setup.experiment_id, name="sweep faults", run_type=RunType.SWEEP, tags={"driver": driver or ""}, params={}
    )
    if status != "RUNNING":
        setup.tracker.finish(parent, status)
    folder = config.resolved_storage_path() / "sweep-20261204-093330"
    write_record(folder, config, parent=parent, experiment_id=setup.experiment_id, split_hash=setup.data.split_hash)
    # Whole files of Tune's kinds, so the check of what a restore reads passes them.
    (folder / "tuner.pkl").write_bytes(pickle.dumps({}))
    (folder / "experiment_state-2026-12-04_09-33-30.json").write_text(json.dumps({"trial_data": []}))
    return path, parent


def _status(out: Path, run_id: str) -> tuple[str, str | None]:
    run = next(r for r in _runs(out) if r.info.run_id == run_id)
    return run.info.status, run.data.tags.get("outcome")


def test_resuming_a_sweep_that_ended_says_so_and_leaves_its_record_unchanged(tmp_path: Path, small_idc: Path) -> None:
    out = tmp_path / "out"
    path, parent = _ended_sweep(tmp_path, small_idc, out, status="FINISHED")
    result = _harness("sweep", str(path), "--resume")
    assert result.returncode == 2
    assert _error_lines(result) == [
        "error: --resume: sweep-20261204-093330 has ended (FINISHED, completed); there is nothing to resume: run "
        "the sweep without --resume to start a new one"
    ]
    assert _status(out, parent) == ("FINISHED", "completed")
    assert len(_runs(out)) == 1


def _corrupt(database: Path) -> None:
    """Write 4 KB of random bytes into the middle of a SQLite file, as a failing disk might."""
    with open(database, "r+b") as file:
        file.seek(database.stat().st_size // 2)
        file.write(np.random.default_rng(0).bytes(4096))


def test_a_damaged_optuna_store_is_one_line_and_neither_a_new_sweep_nor_resume_writes_anything(
    tmp_path: Path, small_idc: Path
) -> None:
    out = tmp_path / "out"
    path, parent = _ended_sweep(tmp_path, small_idc, out, status="FINISHED")
    study = optuna.create_study(storage=f"sqlite:///{out / 'optuna.db'}", study_name="faults")
    for value in range(200):  # enough pages that the damage lands inside the tables
        study.tell(study.ask(), value)
    _corrupt(out / "optuna.db")
    before = sorted(p.name for p in (out / "faults" / "ray").iterdir())
    line = (
        f"error: search.optuna_storage {out / 'optuna.db'}: the database is damaged (database disk image is "
        "malformed); move it aside to start a new one (what it holds cannot be resumed)"
    )
    for args in ((), ("--resume",)):
        result = _harness("sweep", str(path), *args)
        assert result.returncode == 2
        assert _error_lines(result) == [line]
    assert _status(out, parent) == ("FINISHED", "completed")
    assert len(_runs(out)) == 1
    assert sorted(p.name for p in (out / "faults" / "ray").iterdir()) == before


def test_a_journal_storage_naming_a_sqlite_database_is_one_line(tmp_path: Path) -> None:
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="x")
    with pytest.raises(InputError) as refused:
        check_store(optuna_store(f"journal://{tmp_path / 'optuna.db'}"))
    assert str(refused.value) == (
        f"search.optuna_storage {tmp_path / 'optuna.db'}: a SQLite database, not a journal; point it at "
        f"sqlite:///{tmp_path / 'optuna.db'}"
    )


def test_a_tracking_uri_naming_another_kind_of_database_is_one_line(tmp_path: Path, small_idc: Path) -> None:
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="x")
    path = _experiment(tmp_path / "x.yaml", small_idc, tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path}/optuna.db")
    result = _harness("train", str(path), "--baseline", "cancernet")
    assert result.returncode == 2
    assert _error_lines(result) == [
        f"error: tracking_uri {tmp_path / 'optuna.db'}: it has no table 'experiments', so it is not an MLflow "
        "tracking store: point tracking_uri at another file"
    ]


def test_resume_under_another_root_names_the_key_and_ends_what_a_dead_driver_left_running(
    tmp_path: Path, small_idc: Path
) -> None:
    out = tmp_path / "out"
    dead = f"{platform.node()}:{os.getpid()}:0"  # no process started at tick 0
    path, parent = _ended_sweep(tmp_path, small_idc, out, status="RUNNING", driver=dead)
    moved = tmp_path / "moved"
    shutil.copytree(small_idc, moved)
    result = _harness("sweep", str(path), "--resume", "--root", str(moved))
    assert result.returncode == 2
    assert _error_lines(result) == [
        f"error: --resume: dataset.root is {str(moved)!r} now, {str(small_idc)!r} when sweep-20261204-093330 "
        "started; resume with the same file and options, or start a new sweep"
    ]
    assert _status(out, parent) == ("KILLED", "orphaned")


def test_sweeps_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    folders = [new_sweep_folder(tmp_path / "ray", "sweep-20261204-093330") for _ in range(3)]
    assert [f.name for f in folders] == ["sweep-20261204-093330", "sweep-20261204-093330-2", "sweep-20261204-093330-3"]
    assert all(f.is_dir() for f in folders)


SIGNALS_SCRIPT = """
import os, signal
from harness.interrupts import Interrupted, catching_interrupts

with catching_interrupts() as interrupts:
    try:
        signal.raise_signal(signal.SIGINT)
    except Interrupted:
        pass  # dropped, as Python drops an exception raised in a finaliser
    try:
        interrupts.check()
    except Interrupted as exc:
        print("check raised", exc.signal_name, flush=True)
    signal.raise_signal(signal.SIGTERM)
    print("closing goes on", flush=True)
    signal.raise_signal(signal.SIGTERM)
    print("not reached", flush=True)
"""


def test_a_dropped_signal_is_raised_again_and_the_third_exits_at_once() -> None:
    done = subprocess.run([sys.executable, "-c", SIGNALS_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 143
    assert done.stdout.splitlines() == ["check raised SIGINT", "closing goes on"]
    assert done.stderr.splitlines() == [
        "closing the sweep's runs; one more signal exits at once and leaves them RUNNING"
    ]


@pytest.mark.e2e
def test_two_ctrl_cs_still_end_every_run_killed_and_print_the_resume_line(tmp_path: Path, small_idc: Path) -> None:
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    driver = _sweep_past_first_checkpoint(path, out, stdout=subprocess.DEVNULL)
    # A thread of its own reads every line and presses Ctrl-C again at the stop's line: a loop
    # that stopped there and left the rest to communicate() lost the lines the pipe's read-ahead
    # had already taken in, whenever the driver printed its last line before the test read that one.
    seen: list[str] = []

    def read_and_press_again() -> None:
        for line in driver.stderr or ():  # ends when the driver exits
            seen.append(line)
            if line.startswith("stopping once Tune has saved"):
                # During the stop, as a second Ctrl-C lands; when this test falls behind, after it.
                driver.send_signal(signal.SIGINT)

    reader = threading.Thread(target=read_and_press_again, daemon=True)
    reader.start()
    driver.send_signal(signal.SIGINT)
    try:
        driver.wait(timeout=600)
    finally:
        driver.kill()  # only if it outlived the wait: it has been reaped otherwise
    reader.join(timeout=60)
    assert not reader.is_alive(), "the driver's stderr stayed open after it exited"
    driver.stderr.close()
    stderr = "".join(seen)
    assert driver.returncode == 130, stderr[-3000:]
    assert any(line.startswith("stopping once Tune has saved") for line in seen), stderr[-3000:]  # 2nd Ctrl-C sent
    assert f"interrupted; continue with: harness sweep {path} --resume" in stderr
    states = {r.info.run_name: (r.info.status, r.data.tags.get("interrupted")) for r in _runs(out)}
    assert states and set(states.values()) == {("KILLED", "SIGINT")}, states


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("command", "run_type", "again"),
    [
        (
            ("train", "{path}", "--baseline", "cancernet"),
            "train",
            "train again with: harness train {path} --baseline cancernet",
        ),
        (
            ("study", "leakage", "{path}", "--baseline", "cancernet"),
            "study_arm",
            "run it again with: harness study leakage {path} --baseline cancernet",
        ),
    ],
    ids=["train", "study leakage"],
)
def test_sigterm_ends_the_runs_of_train_and_the_leakage_study_killed(
    tmp_path: Path, small_idc: Path, command: tuple[str, ...], run_type: str, again: str
) -> None:
    out = tmp_path / "out"
    path = _long_experiment(tmp_path, small_idc, out)
    args = [a.format(path=path) for a in command]
    process = subprocess.Popen(
        [*HARNESS, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for(
        lambda: any(r.data.tags.get("run_type") == run_type and r.data.metrics for r in _runs(out)),
        timeout=300,
        what=f"a {run_type} run's first epoch",
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    assert stderr.splitlines()[-1].endswith(again.format(path=path))
    assert stderr.splitlines()[-1].startswith("interrupted (SIGTERM); ")
    states = {(r.info.status, r.data.tags.get("interrupted")) for r in _runs(out)}
    assert states == {("KILLED", "SIGTERM")}
