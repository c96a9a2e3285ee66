"""Everything the harness needs from Ray beyond its public API, in one place: checked against Ray 2.60.

Each item below relies on something Ray does not document as public, and why no public way exists.
tests/test_ray_compat.py fails on any other Ray version, and when one of these is gone or
changed shape, so an upgrade is checked here before it is trusted.

- `stop_trial`: `TuneController.stop_trial(trial)` (a DeveloperAPI class). A scheduler that keeps
  trials PAUSED must stop a paused loser itself (its `on_trial_result` answers only for the trial
  reporting); Ray's own HyperBandScheduler does the same, and `stop_trial` is on the allow-list of
  the `TrialRunnerWrapper` that Tune hands schedulers. Tune then calls the scheduler's
  `on_trial_remove` and the searcher's `on_trial_complete` (no result).
- `is_paused`: `Trial.status` and `Trial.is_saving` (DeveloperAPI). A trial Tune is pausing is still
  saving its checkpoint before its status says PAUSED; it must be treated as paused already.
- `restored_result` and `hold_restored`: `Trial.run_metadata.last_result` and `Trial.set_status`
  (DeveloperAPI). `Tuner.restore` re-adds every saved trial to a new scheduler (Tune saves no
  scheduler state) with its last result, the unfinished ones PENDING, and starts every PENDING
  trial whatever the scheduler says. A trial that was waiting at a rung would run past it before
  its bracket decides; set PAUSED inside `on_trial_add` (Tune files the trial under the status it
  has after that call), it waits as a paused trial does until the scheduler chooses it.
- `staged_error`: `Trial.pickled_error_file` and `Trial.error_file`, which point into the driver's
  staging folder (`Trial.local_path`). Tune writes a trial's error there before it calls the
  callbacks and copies it to storage, where the public `Trial.get_error` reads, only at its next
  sync: a callback would otherwise find nothing yet for a trial that failed on another node.
- `CHECKPOINT_LOGGER`: the logger of the private module `ray.train._internal.storage`, which logs a
  line per saved checkpoint (every epoch of every trial) at INFO; no setting turns it off.
- `TRIAL_ERROR_LOGGER`: the logger of `ray.tune.execution.tune_controller`, which logs each failed
  trial's traceback at ERROR; `TUNE_PRINT_ALL_TRIAL_ERRORS=0` silences every trial's, not only
  those the harness says in one line itself.
- `end_trials_killed_for_memory`: when Ray's memory monitor kills a trial's worker, the trial's task
  fails with `ray.exceptions.OutOfMemoryError`, which is neither a `RayActorError` nor a
  `RayTaskError`: `RayActorManager._actor_task_failed` (a private class of `ray.air.execution`)
  raises `RuntimeError("Caught unexpected exception")` from inside Tune's loop and the driver dies.
  It is handed on as the actor error it is (`MemoryMonitorKill`), and
  `TuneController._process_trial_failure` ends that trial without a retry, as it does a trial out of
  `max_failures` (a retry would meet the same memory). Tune has no hook for either.
- The files of an experiment folder that `Tuner.restore` reads (`EXPERIMENT_STATE`, `TUNE_PICKLES`,
  `SEARCHER_STATE`, each the newest by name: `newest`) and, in the experiment state's `trial_data`,
  each trial's `status`, `relative_logdir` and last result's `checkpoint_dir_name`
  (`resumed_checkpoints`). No public API says what a restore will read; `--resume` checks those
  files before Tune reads them (a full disk can cut any of them short).
- `EndsAsTheyComeLimiter`: `ConcurrencyLimiter(batch=True)` holds every trial's end back until its
  whole batch has ended, then passes them all on; no option tells the searcher each end as it comes
  (Optuna's trial times need it). The subclass reads the limiter's `live_trials` (undocumented) to
  tell the searcher first, and relies on the limiter passing the held ends on again at batch end.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import cloudpickle
from ray.exceptions import OutOfMemoryError, RayActorError
from ray.tune.execution import tune_controller as controller
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter

RAY_VERSION = "2.60"  # the version everything here was checked against
CHECKPOINT_LOGGER = "ray.train._internal.storage"
TRIAL_ERROR_LOGGER = "ray.tune.execution.tune_controller"


def stop_trial(tune_controller: Any, trial: Any) -> None:
    """Have Tune stop `trial` (PAUSED or PENDING), which ends it for the scheduler and the searcher."""
    tune_controller.stop_trial(trial)


def is_paused(trial: Any) -> bool:
    """Return whether `trial` is PAUSED or still saving on its way there."""
    return trial.status == Trial.PAUSED or trial.is_saving


def restored_result(trial: Any) -> dict:
    """Return the last result a restored trial had reported before its sweep stopped ({} if none)."""
    return trial.run_metadata.last_result


def hold_restored(trial: Any) -> None:
    """Keep a restored trial, being added to its scheduler, from starting until the scheduler
    chooses it (see above: it is filed as PAUSED)."""
    trial.set_status(Trial.PAUSED)


def staged_error(trial: Any) -> BaseException | str | None:
    """Return the latest error Tune staged on the driver for `trial`: the exception where Tune
    pickled it (an error raised in a Ray worker), else its printed text, else None."""
    pickled, text = trial.pickled_error_file, trial.error_file
    if pickled and Path(pickled).is_file():
        return cloudpickle.loads(Path(pickled).read_bytes())
    if text and Path(text).is_file():
        return Path(text).read_text(errors="replace")
    return None


def quiet_checkpoint_log() -> None:
    """Keep Ray's line per saved checkpoint out of the trial's output (warnings still show)."""
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


# What Ray's memory monitor says of the workers it killed (ray.exceptions.OutOfMemoryError).
MEMORY_MONITOR_WORDS = "killed due to the node running low on memory"


class MemoryMonitorKill(RayActorError):
    """A trial's worker that Ray's memory monitor killed, as the actor error Tune can handle: one line
    saying so and what to lower; Ray's whole report (the node's memory users) is its `traceback_str`."""

    def __init__(self, ray_message: str) -> None:
        used = re.search(r"was ([\d.]+\s*GB used / [\d.]+\s*GB limit)", ray_message)
        super().__init__(
            error_msg=f"a worker was {MEMORY_MONITOR_WORDS} ({used.group(1) if used else 'see its report'}): "
            "lower batch_size or input_size, or run fewer trials at once (search.max_concurrent)"
        )
        self.traceback_str = ray_message


def end_trials_killed_for_memory() -> None:
    """Make Tune end a trial whose worker Ray's memory monitor killed as FAILED with a
    MemoryMonitorKill, without a retry, instead of crashing the driver (see the module); in the
    process that runs Tune's loop, once; returns nothing."""
    if getattr(TuneController._process_trial_failure, "ends_memory_kills", False):
        return
    # The actor manager's class, as Tune's controller imports it (its module is private to Ray).
    manager = controller.RayActorManager
    task_failed, trial_failed = manager._actor_task_failed, TuneController._process_trial_failure

    # functools.wraps keeps Ray's own methods reachable (`__wrapped__`): inspect reads their source
    # through it, so tests/test_ray_compat.py checks Ray's code also after the patch is installed.
    @functools.wraps(task_failed)
    def actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, OutOfMemoryError):
            exception = MemoryMonitorKill(str(exception))
        task_failed(self, tracked_actor_task, exception)

    @functools.wraps(trial_failed)
    def process_trial_failure(self: Any, trial: Any, exception: Any) -> None:
        if isinstance(exception, OutOfMemoryError):  # a worker killed while it started
            exception = MemoryMonitorKill(str(exception))
        if not isinstance(exception, MemoryMonitorKill):
            trial_failed(self, trial, exception)
            return
        retries, trial.max_failures = trial.max_failures, 0
        try:
            trial_failed(self, trial, exception)
        finally:
            trial.max_failures = retries

    process_trial_failure.ends_memory_kills = True  # type: ignore[attr-defined]
    manager._actor_task_failed = actor_task_failed  # type: ignore[method-assign]
    TuneController._process_trial_failure = process_trial_failure  # type: ignore[method-assign]


# Files of a Tune experiment folder, by the patterns Tune names them with (a session's start time
# in the name): its state (JSON, with cloudpickled entries), its own pickles, the searcher's file.
EXPERIMENT_STATE = "experiment_state-*.json"
TUNE_PICKLES = ("tuner.pkl", "search_gen_state-*.json")
SEARCHER_STATE = "searcher-state-*.pkl"
# Trial statuses a restore with resume_unfinished (and errored trials skipped) does not run again.
_ENDED = ("TERMINATED", "ERROR")


def newest(folder: Path, pattern: str) -> Path | None:
    """Return the file of `folder` matching `pattern` that a restore reads (the greatest name), or None."""
    return max(folder.glob(pattern), default=None)


def resumed_checkpoints(state: dict[str, Any], folder: Path) -> list[Path]:
    """Return the checkpoint folders that a restore from experiment state `state` (parsed as plain
    JSON, whose cloudpickled entries stay unread) hands back to the trials it resumes: for each trial
    not ended, the folder its last result names, or every one it has when that result names none.
    Raises KeyError, TypeError or ValueError when `state` is not laid out as Tune 2.60's."""
    folders = []
    for trial_json, metadata_json in state["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        if trial["status"] in _ENDED:
            continue
        trial_folder = folder / trial["relative_logdir"]
        named = (metadata["last_result"] or {}).get("checkpoint_dir_name")
        folders += [trial_folder / named] if named else sorted(trial_folder.glob("checkpoint_*"))
    return folders


class EndsAsTheyComeLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter in batches, except that each trial's end reaches the searcher as it
    comes: Tune's limiter holds every end back until the whole batch has ended, which told Optuna
    that every trial of a batch ended at the same second. The next batch is still suggested only
    once the last has ended (the searcher must ignore the ends the limiter then passes on again)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.live_trials:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
        super().on_trial_complete(trial_id, result=result, error=error)
