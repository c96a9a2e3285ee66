"""Runs a dead driver left RUNNING. A sweep's parent run names the process that drives it (tag
`driver`: host, pid and the process's start time, so a reused pid is not taken for it); a later
sweep of the same experiment, or `--resume`, ends the runs of a sweep whose driver on this host is
gone KILLED with `orphaned=true`, which the leaderboard never counts as trials."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from harness import tracking
from harness.errors import InputError

DRIVER = "driver"
RunType = tracking.RunType


def _start_ticks(pid: int) -> str | None:
    """Return a process's start time in clock ticks since boot (/proc), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: fields are counted after its end.
    return stat.rsplit(")", 1)[1].split()[19]


def driver_identity() -> str:
    """Return this process's identity as the `driver` tag records it."""
    return f"{platform.node()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def driver_alive(identity: str) -> bool | None:
    """Return whether the driver named `identity` still runs; None when it ran on another host."""
    host, pid, ticks = identity.rsplit(":", 2)
    if host != platform.node():
        return None
    return _start_ticks(int(pid)) == ticks


def check_not_running(tracker: tracking.Tracker, parent: str, sweep: str) -> None:
    """Raise InputError when the sweep whose run is `parent` is still driven by a live process."""
    identity = tracker.client.get_run(parent).data.tags.get(DRIVER)
    if identity and driver_alive(identity):
        raise InputError(f"--resume: {sweep} is still running (driver {identity}); stop it first")


def check_not_ended(tracker: tracking.Tracker, parent: str, sweep: str) -> None:
    """Raise InputError when the sweep whose run is `parent` has ended (FINISHED or FAILED):
    resuming it would rewrite its outcome. A KILLED sweep (a signal, or a dead driver's) resumes."""
    run = tracker.client.get_run(parent)
    if run.info.status in (tracking.FINISHED, tracking.FAILED):
        outcome = run.data.tags.get(tracking.OUTCOME, run.info.status.lower())
        raise InputError(
            f"--resume: {sweep} has ended ({run.info.status}, {outcome}); there is nothing to resume: "
            "run the sweep without --resume to start a new one"
        )


def close_orphans(tracker: tracking.Tracker, experiment_id: str) -> list[str]:
    """End KILLED (orphaned=true) every RUNNING sweep of the experiment whose driver on this host
    is gone, with every run still RUNNING under it; returns a note per sweep."""
    sweeps = tracker.client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.{tracking.RUN_TYPE} = '{RunType.SWEEP}'",
    )
    notes = []
    for run in sweeps:
        identity = run.data.tags.get(DRIVER)
        if not identity or driver_alive(identity) is not False:
            continue
        count = tracker.kill_running_under(experiment_id, run.info.run_id, {tracking.ORPHANED: "true"})
        tracker.finish(run.info.run_id, tracking.KILLED, {tracking.ORPHANED: "true"})
        notes.append(
            f"{run.info.run_name}: its driver ({identity}) died without ending it; it and {count} run(s) "
            "under it are ended KILLED (orphaned=true)"
        )
    return notes
