"""Why a trial failed, and which failures a retry would only repeat.

A diverged loss, bad input, running out of memory and a full disk recur on every retry from the same
checkpoint, so a trial that meets one ends FAILED at once: it closes its run with the error and
reports one last result flagged FAILED_KEY instead of raising, since Tune retries every error a
trial raises (up to `search.max_failures`). A worker Ray's memory monitor killed cannot report: Tune
ends it without a retry (harness.ray_compat). Lost nodes and crashed workers are raised as usual
and retried. A tracking server that stopped answering is no fault of the trial: the driver stops the
sweep on it, to be resumed once the server is back.
"""

from __future__ import annotations

from typing import Any

from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

from baselines import WeightsFileError
from harness import ray_compat
from harness.errors import InputError, TrackingUnreachable, disk_full
from harness.tracking import root_cause
from harness.train import DivergedError, OutOfMemory, allocation_failure

DIVERGED, INPUT, OUT_OF_MEMORY, DISK_FULL = "diverged", "input", "out_of_memory", "disk_full"
WORKER_LOST, TRACKING_UNREACHABLE, ERROR = "worker_lost", "tracking_unreachable", "error"
# What an error handed over as text only says, by cause (Tune's printed error of a trial).
_NAMES = {
    OUT_OF_MEMORY: ("OutOfMemory", ray_compat.MEMORY_MONITOR_WORDS),
    TRACKING_UNREACHABLE: ("TrackingUnreachable",),
    WORKER_LOST: ("RayActorError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError"),
}


def deterministic_cause(exc: BaseException) -> str | None:
    """Return the cause of a failure a retry would repeat (diverged, input, out_of_memory,
    disk_full), else None."""
    cause = root_cause(exc)
    if isinstance(cause, DivergedError):
        return DIVERGED
    if isinstance(cause, (InputError, WeightsFileError)):
        return INPUT
    memory = (OutOfMemory, MemoryError, OutOfMemoryError, ray_compat.MemoryMonitorKill)
    if isinstance(cause, memory) or allocation_failure(cause) is not None:
        return OUT_OF_MEMORY
    if disk_full(exc):
        return DISK_FULL
    return None


def failure_cause(exc: BaseException | str) -> str:
    """Return why a trial failed: a deterministic cause, worker_lost for a dead worker or node,
    tracking_unreachable for a tracking server that stopped answering, else error. An error Tune
    hands over as text only is read by the names and words in it."""
    if isinstance(exc, str):
        if allocation_failure(exc) is not None:
            return OUT_OF_MEMORY
        return next((cause for cause, names in _NAMES.items() if any(name in exc for name in names)), ERROR)
    deterministic = deterministic_cause(exc)
    if deterministic is not None:
        return deterministic
    cause = root_cause(exc)
    if isinstance(cause, TrackingUnreachable):
        return TRACKING_UNREACHABLE
    if isinstance(cause, (RayActorError, WorkerCrashedError, NodeDiedError)):
        return WORKER_LOST
    return ERROR


def trial_error(trial: Any) -> BaseException | str | None:
    """Return the latest error Tune recorded for `trial`: the exception where Tune pickled it (an
    error raised in a Ray worker), else its printed text, else None.

    Tune writes both into the driver's staging folder before it calls the callbacks, and copies them
    to the storage path (where `Trial.get_error` looks) only at its next sync: read the staged copy
    first, or a callback on another node's failure may find nothing yet."""
    staged = ray_compat.staged_error(trial)
    if staged is not None:
        return staged
    return trial.get_pickled_error() or trial.get_error()
