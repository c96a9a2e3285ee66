"""harness.ray_compat names the Ray version it was checked against and what private parts of Ray it
relies on: these tests fail on any other version, and when one of those parts is gone or changed, so
that an upgrade is checked before it is trusted."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from pathlib import Path

import pytest
import ray
from ray.air.execution._internal.actor_manager import RayActorManager
from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError
from ray.train._internal.storage import StorageContext
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.impl.tuner_internal import _TUNER_PKL
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator
from ray.tune.trainable import trainable

from harness import ray_compat


def test_the_installed_ray_is_the_one_the_adapter_was_checked_against() -> None:
    assert ray.__version__.split(".")[:2] == ray_compat.RAY_VERSION.split("."), (
        f"Ray {ray.__version__} is installed; harness/ray_compat.py was checked against {ray_compat.RAY_VERSION}: "
        "check each item its docstring lists against the new version, then update RAY_VERSION"
    )


def test_a_scheduler_may_stop_a_paused_trial_through_the_controller() -> None:
    assert list(inspect.signature(TuneController.stop_trial).parameters) == ["self", "trial"]
    # The controller Tune hands a scheduler warns on any attribute outside this allow-list.
    assert '"stop_trial"' in inspect.getsource(TuneController._wrapped)
    # A paused trial stopped there leaves the scheduler and the searcher as SynchronousHalving expects.
    stop = inspect.getsource(TuneController.stop_trial)
    assert "self._scheduler_alg.on_trial_remove(self, trial)" in stop
    assert "self._search_alg.on_trial_complete(trial.trial_id)" in stop


@pytest.fixture
def stub_trial(local_ray: None, tmp_path: Path) -> Trial:
    """A stub trial in a Ray session (the session's shared one): its driver staging folder needs one."""
    storage = StorageContext(storage_path=str(tmp_path / "storage"), experiment_dir_name="exp", trial_dir_name="t")
    trial = Trial("__fake", stub=True, storage=storage)
    trial.init_local_path()
    return trial


def test_an_error_is_staged_on_the_driver_before_storage_has_it(stub_trial: Trial) -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = RayTaskError("trial", "Traceback: boom", exc)
    stub_trial.handle_error(error)
    staged_file, staging = stub_trial.pickled_error_file, stub_trial.local_path
    assert staged_file and staging and Path(staged_file).parent == Path(staging)
    # Until Tune syncs, the public readers find nothing; the staged copy has the error.
    assert stub_trial.get_pickled_error() is None and stub_trial.get_error() is None
    staged = ray_compat.staged_error(stub_trial)
    assert isinstance(staged, RayTaskError) and isinstance(staged.cause, ValueError)


def test_a_trial_being_saved_on_its_way_to_pause_counts_as_paused(stub_trial: Trial) -> None:
    assert isinstance(inspect.getattr_static(Trial, "is_saving"), property)
    assert not ray_compat.is_paused(stub_trial)
    stub_trial.temporary_state.saving_to = object()  # type: ignore[assignment]  # any value: a save in flight
    assert ray_compat.is_paused(stub_trial)
    stub_trial.temporary_state.saving_to = None
    stub_trial.set_status(Trial.PAUSED)
    assert ray_compat.is_paused(stub_trial)


def test_the_checkpoint_line_comes_from_the_logger_the_adapter_quiets() -> None:
    module = importlib.import_module(ray_compat.CHECKPOINT_LOGGER)
    # Tune's trainables persist checkpoints through this module's StorageContext, which logs each at INFO.
    assert trainable.StorageContext is module.StorageContext
    assert module.logger.name == ray_compat.CHECKPOINT_LOGGER
    assert 'logger.info(f"Checkpoint successfully created' in inspect.getsource(module.StorageContext)
    logger = logging.getLogger(ray_compat.CHECKPOINT_LOGGER)
    level = logger.level
    try:
        ray_compat.quiet_checkpoint_log()
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(level)


def test_a_memory_monitor_kill_is_no_error_tunes_actor_manager_hands_on() -> None:
    failed = inspect.getsource(RayActorManager._actor_task_failed)
    assert list(inspect.signature(RayActorManager._actor_task_failed).parameters) == [
        "self",
        "tracked_actor_task",
        "exception",
    ]
    # Only these two reach the trial's error handling; OutOfMemoryError is neither, and is raised instead.
    assert "isinstance(exception, RayActorError)" in failed and "isinstance(exception, RayTaskError)" in failed
    assert 'f"Caught unexpected exception: {exception}"' in failed
    assert not issubclass(OutOfMemoryError, (RayActorError, RayTaskError))


def test_a_trial_failure_is_retried_while_its_failures_stay_within_max_failures() -> None:
    assert list(inspect.signature(TuneController._process_trial_failure).parameters) == ["self", "trial", "exception"]
    assert "trial.should_recover()" in inspect.getsource(TuneController._process_trial_failure)
    assert "self.max_failures" in inspect.getsource(Trial.should_recover)


def test_tunes_traceback_of_a_failed_trial_comes_from_the_logger_the_sweep_filters() -> None:
    module = importlib.import_module(ray_compat.TRIAL_ERROR_LOGGER)
    assert module.logger.name == ray_compat.TRIAL_ERROR_LOGGER
    assert 'logger.error(f"Trial task failed for trial {trial}", exc_info=exception)' in inspect.getsource(
        TuneController._trial_task_failure
    )


def test_a_restore_reads_the_files_and_trial_fields_the_adapter_checks(stub_trial: Trial) -> None:
    assert TuneController.CKPT_FILE_TMPL.format("*") == ray_compat.EXPERIMENT_STATE
    assert Searcher.CKPT_FILE_TMPL.format("*") == ray_compat.SEARCHER_STATE
    assert {_TUNER_PKL, SearchGenerator.CKPT_FILE_TMPL.format("*")} == set(ray_compat.TUNE_PICKLES)
    # A trial as TuneController.save_to_dir writes it into the state's trial_data.
    stub_trial.run_metadata.last_result = {"checkpoint_dir_name": "checkpoint_000003"}
    state = json.loads(json.dumps({"trial_data": [stub_trial.get_json_state()]}))
    folder = Path(stub_trial.storage.experiment_fs_path)
    resumed = [folder / stub_trial.storage.trial_dir_name / "checkpoint_000003"]
    assert ray_compat.resumed_checkpoints(state, folder) == resumed
    stub_trial.set_status(Trial.TERMINATED)
    state = json.loads(json.dumps({"trial_data": [stub_trial.get_json_state()]}))
    assert ray_compat.resumed_checkpoints(state, folder) == []


class _Ends(Searcher):
    """A searcher that hands out numbered points and records the ends it is told, in order."""

    def __init__(self) -> None:
        super().__init__(metric="objective", mode="max")
        self.ends: list[str] = []

    def suggest(self, trial_id: str) -> dict:
        return {"x": len(trial_id)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.ends.append(trial_id)


def test_a_batch_limiter_tells_each_end_as_it_comes_and_again_when_the_batch_ends() -> None:
    searcher = _Ends()
    limiter = ray_compat.EndsAsTheyComeLimiter(searcher, max_concurrent=2, batch=True)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # the next batch waits for this one
    limiter.on_trial_complete("a", {"objective": 1.0})
    assert searcher.ends == ["a"]  # Tune's own limiter would still hold it back
    limiter.on_trial_complete("b", {"objective": 2.0})
    # At the batch's end Tune's limiter passes on every end it held: the searcher must ignore repeats.
    assert searcher.ends[:2] == ["a", "b"] and set(searcher.ends[2:]) <= {"a", "b"}
    assert limiter.suggest("c") is not None


def test_a_restored_trial_held_by_its_scheduler_is_filed_as_paused(stub_trial: Trial) -> None:
    # Tuner.restore adds every trial with its last result; add_trial files it under the status it
    # has after the scheduler's on_trial_add, which is where SynchronousHalving holds it.
    add = inspect.getsource(TuneController.add_trial)
    assert add.index("on_trial_add(") < add.index("status_str_map[trial.status].add(trial)")
    assert "self.add_trial(trial_to_add)" in inspect.getsource(TuneController._requeue_restored_trials)
    assert ray_compat.restored_result(stub_trial) == {}
    stub_trial.run_metadata.last_result = {"epoch": 1}
    assert ray_compat.restored_result(stub_trial) == {"epoch": 1}
    ray_compat.hold_restored(stub_trial)
    assert stub_trial.status == Trial.PAUSED
