"""A sweep's record beside Tune's state (`harness-sweep.json`): which MLflow runs and split it
belongs to, and fingerprints of the experiment file and of every search-space file it started
with, so `--resume` continues a sweep only on the configuration it started with."""

from __future__ import annotations

import hashlib
import json
import pickletools
from pathlib import Path

from ray import tune

from harness import ray_compat, tracking
from harness.atomic import write_atomically
from harness.config import ExperimentConfig, search_space_path
from harness.errors import InputError

from ._checkpoint import CHECKPOINT_FILE, load_checkpoint
from ._search import read_searcher_state
from ._trial import close_trial_run

SWEEP_RECORD = "harness-sweep.json"


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a hash of everything in the experiment file that shapes a sweep's trials."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


def space_fingerprints(config: ExperimentConfig) -> dict[str, str]:
    """Return a hash of each baseline's search-space file as `config` read it, by the file's path."""
    return {
        str(search_space_path(b.name)): hashlib.sha256(config.space_file(b.name).model_dump_json().encode()).hexdigest()
        for b in config.baselines
    }


def write_record(folder: Path, config: ExperimentConfig, *, parent: str, experiment_id: str, split_hash: str) -> None:
    """Write the record of a new sweep into its Tune folder, whole or not at all."""
    record = {
        "parent_run_id": parent,
        "experiment_id": experiment_id,
        "tracking_uri": config.resolved_tracking_uri(),
        "split_hash": split_hash,
        "fingerprint": config_fingerprint(config),
        "config": config.model_dump(mode="json"),
        "spaces": space_fingerprints(config),
    }
    write_atomically(folder / SWEEP_RECORD, json.dumps(record, indent=2).encode())


def _first_change(then: object, now: object, key: str = "") -> tuple[str, object, object] | None:
    """Return the dotted key (list items as `[i]`) of the first value that differs between two
    dumps of a configuration, with its value then and now; None when they are equal."""
    if isinstance(then, dict) and isinstance(now, dict):
        pairs = [(f"{key}.{name}" if key else name, then.get(name), now.get(name)) for name in sorted(then | now)]
    elif isinstance(then, list) and isinstance(now, list) and len(then) == len(now):
        pairs = [(f"{key}[{i}]", a, b) for i, (a, b) in enumerate(zip(then, now))]
    else:
        return None if then == now else (key, then, now)
    return next((c for k, a, b in pairs if (c := _first_change(a, b, k)) is not None), None)


def check_resumable(config: ExperimentConfig, record: dict, sweep: str) -> None:
    """Raise InputError unless `config` and its search-space files are those `sweep` started with
    (its `record`): Tune would continue the old studies on a changed space without a word. The
    line names the first key that changed, with its value then and now."""
    if record["fingerprint"] != config_fingerprint(config):
        # A sweep recorded before the configuration itself was kept has only its fingerprint.
        change = _first_change(record["config"], config.model_dump(mode="json")) if "config" in record else None
        if change is None:
            what = f"{config.name}'s experiment file changed since {sweep} started"
        else:
            what = f"{change[0]} is {change[2]!r} now, {change[1]!r} when {sweep} started"
        raise InputError(f"--resume: {what}; resume with the same file and options, or start a new sweep")
    # A sweep recorded before search spaces were fingerprinted has no "spaces": nothing to compare.
    now = space_fingerprints(config)
    changed = sorted(path for path, digest in record.get("spaces", {}).items() if now.get(path) != digest)
    if changed:
        raise InputError(
            f"--resume: search space file {changed[0]} changed since {sweep} started; restore it, or start a new sweep"
        )


def interrupted_sweep(config: ExperimentConfig, storage: Path) -> tuple[Path, dict]:
    """Return the folder and record of the newest sweep of `config` in `storage` that Tune can
    restore; raises InputError when there is none, or when its configuration changed since."""
    candidates = sorted(storage.glob(f"sweep-*/{SWEEP_RECORD}"), reverse=True) if storage.is_dir() else []
    for record_path in candidates:
        if tune.Tuner.can_restore(str(record_path.parent)):
            try:
                record = json.loads(record_path.read_text())
            except ValueError:
                raise InputError(
                    f"--resume: {record_path}: the sweep's record is not whole JSON (damaged); nothing was resumed"
                ) from None
            check_resumable(config, record, record_path.parent.name)
            return record_path.parent, record
    raise InputError(f"--resume: no sweep of {config.name!r} to resume in {storage}")


_CUT_SHORT = "cut short, as a full disk leaves one"


def _parsed_json(path: Path) -> dict | None:
    """Return the JSON object in file `path`, None when it is not whole JSON (cut short)."""
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None


def _experiment_state(folder: Path) -> dict:
    """Return the experiment state a restore of `folder` reads, parsed as plain JSON; raises
    InputError naming it when it is cut short (and naming an older complete one beside it)."""
    states = sorted(folder.glob(ray_compat.EXPERIMENT_STATE), reverse=True)
    if not states:
        raise InputError(f"{folder}: holds no Tune experiment state ({ray_compat.EXPERIMENT_STATE})")
    newest, *older = states
    if (state := _parsed_json(newest)) is not None:
        return state
    complete = next((path for path in older if _parsed_json(path) is not None), None)
    problem = f"{newest}: Tune's experiment state is incomplete ({_CUT_SHORT})"
    if complete is None:
        raise InputError(f"{problem} and no complete one lies beside it")
    raise InputError(f"{problem}; move it aside to resume from the older {complete.name} beside it")


def _resumed_checkpoints(folder: Path, state: dict) -> list[Path]:
    """Return the checkpoint folders a restore of `folder` from `state` resumes trials from."""
    try:
        return ray_compat.resumed_checkpoints(state, folder)
    except (KeyError, TypeError, ValueError):
        newest = ray_compat.newest(folder, ray_compat.EXPERIMENT_STATE)
        raise InputError(f"{newest}: not an experiment state of Ray Tune {ray_compat.RAY_VERSION}") from None


def _check_whole_pickle(path: Path) -> None:
    """Raise InputError unless file `path` is a whole pickle: its opcodes are read up to the final
    STOP, which a file cut short never reaches (pickletools reads opcodes, it builds no object)."""
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except ValueError:
        raise InputError(f"{path}: Tune's saved state is incomplete ({_CUT_SHORT})") from None


def _check_checkpoint(folder: Path) -> None:
    """Raise InputError unless checkpoint `folder` (if there still is one) holds a whole plain-data
    trial checkpoint."""
    if not folder.is_dir():
        return  # Tune deleted it after a newer one: Tune's own state is behind, as it was before
    if not (folder / CHECKPOINT_FILE).is_file():
        raise InputError(f"{folder}: the checkpoint holds no {CHECKPOINT_FILE} ({_CUT_SHORT})")
    load_checkpoint(folder / CHECKPOINT_FILE)


def check_stored_state(folder: Path) -> None:
    """Raise InputError naming the first file that resuming the sweep in Tune folder `folder` would
    read and that is cut short (a full disk) or not what Tune and this harness write: Tune's newest
    experiment state and pickles, the searcher state, and the checkpoint of each trial a restore
    resumes. Call it before handing the folder to Tune; it unpickles nothing (docs/cluster.md)."""
    try:
        state = _experiment_state(folder)
        for pattern in ray_compat.TUNE_PICKLES:
            if (path := ray_compat.newest(folder, pattern)) is not None:
                _check_whole_pickle(path)
        if (path := ray_compat.newest(folder, ray_compat.SEARCHER_STATE)) is not None:
            read_searcher_state(path)
        for checkpoint in _resumed_checkpoints(folder, state):
            _check_checkpoint(checkpoint)
    except InputError as exc:
        raise InputError(f"--resume: {exc}; nothing was resumed") from None


def _tune_trials(folder: Path) -> dict[str, tuple[str, dict]]:
    """Return each trial in the newest experiment state Tune saved in `folder`: its status and last result."""
    analysis = tune.ExperimentAnalysis(str(folder))
    return {trial.trial_id: (trial.status, trial.last_result) for trial in analysis.trials}


def _lost_note(trial_id: str) -> str:
    return (
        f"trial {trial_id} started after the killed driver last saved its state; its run is "
        f"set aside (run_type={tracking.RunType.LOST_TRIAL}) and Tune runs its point again"
    )


# The Tune states, as saved last, of a trial whose run the dead driver left training; a PAUSED one
# (halving) had not lost an attempt.
LOST_ATTEMPT = ("RUNNING", "PENDING")


def reconcile_trial_runs(
    tracker: tracking.Tracker, experiment_id: str, parent: str, folder: Path, stopped_by: str
) -> list[str]:
    """Bring the RUNNING trial runs a killed driver left in line with the Tune state it saved last;
    returns notes. A run whose trial that state does not hold is ended KILLED and retyped (Tune
    suggests its point again as a new trial, keeping one run per trial); a run whose trial ended
    there is closed as the driver would have; the others are resumed by Tune, one more attempt for
    those that were training. A run `close-orphans` ended (KILLED, orphaned) is one the driver left
    RUNNING: it is reopened and treated alike."""
    trials = _tune_trials(folder)
    notes = []
    for run in tracker.child_runs(experiment_id, parent, tracking.RunType.TRIAL):
        trial_id = run.data.tags[tracking.TRIAL_ID]
        orphaned = run.info.status == tracking.KILLED and run.data.tags.get(tracking.ORPHANED) == "true"
        if trial_id not in trials:
            lost = {tracking.RUN_TYPE: str(tracking.RunType.LOST_TRIAL), tracking.STOPPED_BY: "driver_lost"}
            tracker.finish(run.info.run_id, tracking.KILLED, lost)
            notes.append(_lost_note(trial_id))
            continue
        if orphaned:
            tracker.reopen(run.info.run_id)
        elif run.info.status != tracking.RUNNING:
            continue
        if trials[trial_id][0] == "TERMINATED":
            close_trial_run(tracker, run.info.run_id, trials[trial_id][1], stopped_by)
        elif trials[trial_id][0] == "ERROR":
            error = "the driver died before it recorded this trial's error (see the Tune folder's error.txt)"
            tracker.finish(run.info.run_id, tracking.FAILED, {tracking.ERROR: error, tracking.FAILURE_CAUSE: "error"})
        elif trials[trial_id][0] in LOST_ATTEMPT:
            # It was training when the driver died: Tune starts it again, from its last checkpoint.
            tracker.count_attempt(run.info.run_id)
    return notes
