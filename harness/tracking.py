"""MLflow tracking: a parent run per sweep, a child run per trial, per-epoch metrics, artifacts, tags.

A small tracker of our own instead of Ray's MLflowLoggerCallback or Optuna's MLflowCallback
(NOTES-ray-optuna-mlflow.md): runs are created by id and nested with the `mlflow.parentRunId`
tag, one `log_batch` per epoch, retries when SQLite is locked by a parallel writer.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar, overload

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from harness.environment import MLFLOW_FAIL_FAST, MLFLOW_QUIET, environment
from harness.errors import InputError, TrackingUnreachable
from harness.figures import confusion_png, gallery_png
from harness.locking import sqlite_path, store_lock
from harness.metrics import never_predicted

if TYPE_CHECKING:
    # Only a type here: a process that only logs (a tracking-load writer, a driver callback) need
    # not import torch and the model zoo with it.
    from harness.evaluation import Evaluation

T = TypeVar("T")
# What a store under load answers while it is busy: retried (MLflow's client retries only 5xx and
# 429, and the server returns a full connection pool as 400).
TRANSIENT = ("locked", "QueuePool limit", "connection timed out")
BUSY_ATTEMPTS = 8
# Seconds of continuous failure (no answer from the server) after which a tracking call gives up
# with TrackingUnreachable; each process reads its own environment (a node's trials, their raylet's).
OUTAGE_ENV = "HARNESS_TRACKING_OUTAGE_S"
DEFAULT_OUTAGE_S = 60.0
OUTAGE_POLL_S = 0.5  # between calls to a server that does not answer

# Tag names shared by the sweep (writer) and the leaderboard (reader).
PARENT = "mlflow.parentRunId"
RUN_TYPE = "run_type"  # a RunType
BASELINE = "baseline"
DATASET = "dataset"
DATASET_ROOT = "dataset_root"
SPLIT_HASH = "split_hash"
MANIFEST_HASH = "manifest_hash"
TRIAL_ID = "ray_trial_id"
OPTUNA_TRIAL = "optuna_trial_number"  # the trial's number in its baseline's Optuna study
STOPPED_BY = "stopped_by"
# What a `stopped_by` tag names: ASHA, or synchronous halving in a reproducible sweep, both stopping
# trials by design (a trial the killed driver lost is tagged otherwise, and is no early stop).
STOPPED_BY_ASHA, STOPPED_BY_HALVING = "asha", "halving"
EARLY_STOPPERS = (STOPPED_BY_ASHA, STOPPED_BY_HALVING)
ERROR = "error"
DESCRIPTION = "mlflow.note.content"  # a run's description, Markdown in the MLflow UI
LEADERBOARD_LINE = "**Leaderboard**:"  # how a sweep run's description starts the line about it
INTERRUPTED = "interrupted"  # the signal that ended a KILLED run: SIGINT, SIGTERM
ORPHANED = "orphaned"  # "true" on a run its dead driver left RUNNING, ended KILLED by a later sweep
# Why a run ended, on every ended run: completed, stopped_early (FINISHED: ASHA or halving stopped it
# by design), failed, interrupted (a signal) or orphaned. MLflow's red mark then means a failure.
OUTCOME = "outcome"
# Why a run FAILED: diverged, input, out_of_memory (not retried), worker_lost or error (retried).
FAILURE_CAUSE = "failure_cause"
PRETRAINED = "pretrained"
PROTOCOL = "protocol"
# `protocol` values of the leakage study's two arms: patch-level folds (the seeds') and patient folds.
PATCH_RANDOM, PATIENT = "patch_random", "patient"
FOLD = "fold"
OBJECTIVE = "objective_metric"
ROI_SOURCE = "roi_source"  # none | files | tissue
NODE_ID = "ray_node_id"  # the node of the latest attempt
NODE_IP = "ray_node_ip"
NODE_IDS = "ray_node_ids"  # the node of every start, in order (a retry's, a resume's, the end of a pause)
ATTEMPTS = "attempts"  # 1 + the retries after failures (a scheduler's pauses and resumes are no attempts)
RETRIES = "retries"
# On a run that Ray granted a GPU: the GPU ids it granted, CUDA_VISIBLE_DEVICES as the run saw it, and
# the device it trained on ("cpu" where the node advertises GPUs torch cannot find).
GPU_IDS = "ray_gpu_ids"
CUDA_VISIBLE = "cuda_visible_devices"
TRAINED_ON = "trained_on"
WINNER = "winner_trial_id"
# A trained run's parameter count in one counting convention (torch, keras, weights_only), as a tag
# `params_<convention>`: not a metric, so MLflow's charts and compare view do not lead with it.
PARAM_COUNT_PREFIX = "params_"
FLOOR = "floor"  # "true" on the runs of a floor model (majority, colour_forest)
CPU_SHARE = "resources_cpu"  # what Ray granted one trial or fold task: GPU-hours = wall time x share
GPU_SHARE = "resources_gpu"
# Experiment tags MLflow 3's UI reads: the kind of work (model training, not GenAI traces, so the
# experiment opens on its runs) and the metric runs are ranked by.
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
PRIMARY_GREATER_IS_BETTER = "mlflow.experiment.primaryMetric.greaterIsBetter"


def experiment_tags(mode: str) -> dict[str, str]:
    """Return the experiment tags that make MLflow's UI treat an experiment as model development
    ranked by `objective` (every training run logs it), higher first when `mode` is max."""
    return {
        EXPERIMENT_KIND: MODEL_DEVELOPMENT,
        PRIMARY_METRIC: "objective",
        PRIMARY_GREATER_IS_BETTER: "true" if mode == "max" else "false",
    }


class RunType(StrEnum):
    """What a run is, tagged `run_type` on every run the harness logs."""

    SWEEP = "sweep"  # a sweep's parent run
    TRIAL = "trial"  # one sampled configuration on the search fold
    LOST_TRIAL = "lost_trial"  # a trial a killed driver started after its last saved state
    FLOOR = "floor"  # a floor model on the search fold, in a trial's place
    FOLD = "fold"  # a winner (or floor) retrained on one fold
    ENSEMBLE = "ensemble"  # the mean softmax of a winner's (or floor's) fold models
    TRAIN = "train"  # one `harness train` run
    STUDY = "study"  # a study's parent run
    STUDY_ARM = "study_arm"  # one arm of a study on one fold


RUNNING = RunStatus.to_string(RunStatus.RUNNING)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
FAILED = RunStatus.to_string(RunStatus.FAILED)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ERROR_LIMIT = 4000  # characters of an `error` tag; MLflow caps a tag's value


def root_cause(exc: BaseException) -> BaseException:
    """Return the exception a Ray wrapper (task error, Tune error) carries, or `exc` itself."""
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and cause is not exc:
        exc, cause = cause, getattr(cause, "cause", None)
    return exc


def error_text(exc: BaseException | str) -> str:
    """Return the plain text a FAILED run's `error` tag holds: the exception's type and message
    first, then the tail of its traceback (Ray's, for an error raised in a Ray worker), no colour
    codes. Tune hands some errors over as their printed text only: its last line comes first then."""
    if isinstance(exc, str):
        lines = [line for line in _ANSI.sub("", exc).strip().splitlines() if line.strip()]
        head, trace = (lines[-1] if lines else "unknown error")[: ERROR_LIMIT // 4], "\n".join(lines)
    else:
        cause = root_cause(exc)
        head = _ANSI.sub("", f"{type(cause).__name__}: {cause}").strip()[: ERROR_LIMIT // 4]
        trace = getattr(exc, "traceback_str", None) or "".join(traceback.format_exception(cause))
    room = ERROR_LIMIT - len(head) - 2
    return f"{head}\n\n{_ANSI.sub('', trace).strip()[-room:]}"


def git_commit(directory: Path | None = None) -> str:
    """Return the checked-out commit of `directory` (default: the working directory at the call),
    suffixed `-dirty` with local changes, or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def source_tags(commit: str) -> dict[str, str]:
    """Return MLflow's source tags, which its Source column shows, and the whole command line."""
    words = [Path(sys.argv[0]).name, *sys.argv[1:]]
    # The UI shows a local source's last path component: the words' own names keep it readable.
    short = " ".join(Path(w).name if "/" in w else w for w in words)
    return {
        "command": " ".join(words),
        "mlflow.source.name": short,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": commit,
    }


def environment_tags() -> dict[str, str]:
    """Return the versions and host that explain a run's numbers."""
    import ray
    import timm
    import torch

    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.timm": timm.__version__,
        "env.ray": ray.__version__,
        "env.host": platform.node(),
        "env.cuda": torch.version.cuda or "none",
    }


# The folder beside a SQLite store that holds its artifacts (each experiment's in a subfolder).
ARTIFACTS_FOLDER = "mlartifacts"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Return an absolute artifact folder beside a SQLite store; a server chooses its own (None)."""
    database = sqlite_path(tracking_uri)
    if database is None:
        return None
    return (database.parent / ARTIFACTS_FOLDER / experiment).resolve().as_uri()


def outage_seconds() -> float:
    """Return how many seconds of continuous failure a tracking call waits out before it gives up:
    HARNESS_TRACKING_OUTAGE_S, default 60; raises InputError for a value that is no such number."""
    value = os.environ.get(OUTAGE_ENV)
    if value is None:
        return DEFAULT_OUTAGE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise InputError(f"{OUTAGE_ENV}={value!r}: expected a number of seconds, 0 or more")
    return seconds


def unreachable_reason(exc: MlflowException) -> str | None:
    """Return why an MLflow call got no answer from its server, in a few words (a refused
    connection, a timeout, a 5xx answer after MLflow's own retry), or None when the server answered."""
    text = str(exc)
    # MLflow's HTTP client words every transport failure so; an answer the server gave is its message.
    if not (text.startswith("API request to ") and " failed with " in text):
        return None
    if errno := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return errno.group(1).strip()
    if status := re.search(r"too many (\d{3}) error responses", text):
        return f"HTTP {status.group(1)}"
    return "timed out" if "timed out" in text or "timeout" in text else "no answer"


@dataclass
class _Outage:
    """Calls to a server that do not get an answer, one after another: when the first failed (wall
    clock, and monotonic for the bound), why the latest did, and whether the tracker gave up."""

    since: datetime
    started: float
    reason: str
    given_up: bool = False


_stop_waiting = False


def stop_waiting() -> None:
    """Make every tracker of this process give up on a server that does not answer at its next
    failed call instead of waiting out HARNESS_TRACKING_OUTAGE_S, for the rest of the process (a
    signal asked it to stop: its answer must not wait on the server); returns nothing."""
    global _stop_waiting
    _stop_waiting = True


def children_filter(parent: str, run_type: RunType) -> str:
    """Return the MLflow search for the runs of `run_type` nested directly under run `parent`."""
    return f"tags.`{PARENT}` = '{parent}' and tags.{RUN_TYPE} = '{run_type}'"


def _started_on(tags: dict[str, str]) -> list[str]:
    """Return the node of every start of a run with `tags`, in order."""
    return [n for n in tags.get(NODE_IDS, "").split(",") if n]


class Tracker:
    """Thin, retrying wrapper over MlflowClient with the harness's run hierarchy.

    Every call rides through a busy store and a brief outage; once the server has failed every call
    for `outage_s` seconds in a row (HARNESS_TRACKING_OUTAGE_S), calls raise TrackingUnreachable,
    and go on failing at once until one gets an answer again.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.outage_s = outage_seconds()
        self._outage: _Outage | None = None

    def _retry(self, call: Callable[[], T], before_resend: Callable[[], None] | None = None) -> T:
        """Run an MLflow call, retrying with backoff while the store is busy (a SQLite lock held by
        another writer, a server's full connection pool) and while the server does not answer (see
        the class), calling `before_resend` (which may raise to give up) before each try after one
        the server did not answer; returns what the call does."""
        busy = 0
        while True:
            try:
                # Quiet (no URL line, no telemetry) in any process: a worker of a joined cluster or a
                # Ray Client driver does not inherit the environment the CLI and run_sweep set.
                with environment({**MLFLOW_QUIET, **MLFLOW_FAIL_FAST}):
                    result = call()
            except MlflowException as exc:
                reason = unreachable_reason(exc)
                if reason is not None:
                    self._wait_out(reason, exc)
                    if before_resend is not None:
                        before_resend()
                    continue
                if not any(words in str(exc) for words in TRANSIENT) or busy == BUSY_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2**busy)
                busy += 1
                continue
            self._outage = None
            return result

    def _wait_out(self, reason: str, exc: MlflowException) -> None:
        """Pause before the next try of a call the server did not answer; raises TrackingUnreachable
        once it has answered none for `outage_s` seconds (at once after that, or after a signal)."""
        outage = self._outage = self._outage or _Outage(datetime.now(), time.monotonic(), reason)
        outage.reason = reason
        left = outage.started + self.outage_s - time.monotonic()
        if left <= 0 or outage.given_up or _stop_waiting:
            outage.given_up = True
            raise TrackingUnreachable(self.uri, outage.since, reason) from exc
        try:
            time.sleep(min(OUTAGE_POLL_S, left))
        except BaseException:
            # A signal's exception: the calls that end the runs after it do not wait again.
            outage.given_up = True
            raise

    @property
    def unreachable(self) -> TrackingUnreachable | None:
        """Return the error this tracker gave up with while its server still does not answer, else None."""
        outage = self._outage
        return TrackingUnreachable(self.uri, outage.since, outage.reason) if outage and outage.given_up else None

    @overload
    def experiment_id(self, name: str, *, create: Literal[True] = True) -> str: ...
    @overload
    def experiment_id(self, name: str, *, create: bool) -> str | None: ...

    def experiment_id(self, name: str, *, create: bool = True) -> str | None:
        """Return the id of experiment `name`, creating it (artifacts at an absolute path) if asked."""
        found = self._retry(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            return found.experiment_id
        if not create:
            return None
        location = default_artifact_location(self.uri, name)
        try:
            return self._retry(lambda: self.client.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Another process created it between our lookup and our create.
            created = self._retry(lambda: self.client.get_experiment_by_name(name))
            if created is None:
                raise
            return created.experiment_id

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Set those of `tags` an experiment lacks or holds another value of. Two processes setting
        the same tag at once race MLflow's insert: the loser finds it set as it wanted."""
        held = self._retry(lambda: self.client.get_experiment(experiment_id)).tags
        for key, value in tags.items():
            if held.get(key) == value:
                continue
            try:
                self._retry(functools.partial(self.client.set_experiment_tag, experiment_id, key, value))
            except MlflowException:
                if self._retry(lambda: self.client.get_experiment(experiment_id)).tags.get(key) != value:
                    raise

    def start_run(
        self,
        experiment_id: str,
        *,
        name: str,
        run_type: RunType,
        tags: dict[str, str],
        params: dict[str, Any],
        parent: str | None = None,
    ) -> str:
        """Create a RUNNING run of `run_type` (nested under `parent` if given) with tags and params,
        and the manifest the tags name as its dataset input; returns its id. Prefer `run`, which
        also ends it."""
        tags = {**tags, RUN_TYPE: str(run_type), **({PARENT: parent} if parent else {})}
        run = self._retry(lambda: self.client.create_run(experiment_id, tags=tags, run_name=name))
        run_id = run.info.run_id
        if DATASET in tags and MANIFEST_HASH in tags:
            self._log_dataset(run_id, tags)
        if params:
            batch = [Param(k, str(v)) for k, v in sorted(params.items())]
            self._retry(lambda: self.client.log_batch(run_id, params=batch))
        return run_id

    def _log_dataset(self, run_id: str, tags: dict[str, str]) -> None:
        """Log the manifest a run's tags name as its MLflow dataset input (the UI's Dataset column);
        the digest is the manifest hash's first 16 digits (MLflow keeps 36 characters)."""
        source = json.dumps({"uri": tags.get(DATASET_ROOT, "unknown")})
        dataset = Dataset(tags[DATASET], tags[MANIFEST_HASH][:16], "local", source)
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
        self._retry(lambda: self.client.log_inputs(run_id, inputs))

    @contextmanager
    def run(
        self,
        experiment_id: str,
        *,
        name: str,
        run_type: RunType,
        tags: dict[str, str],
        params: dict[str, Any],
        parent: str | None = None,
    ) -> Iterator[str]:
        """Open a run as `start_run` does and yield its id; the run ends as `ending` says."""
        run_id = self.start_run(experiment_id, name=name, run_type=run_type, tags=tags, params=params, parent=parent)
        with self.ending(run_id):
            yield run_id

    def log_metrics(
        self, run_id: str, metrics: dict[str, float], *, step: int, before_resend: Callable[[], None] | None = None
    ) -> None:
        """Log all `metrics` at `step` in one batch, calling `before_resend` before sending it again
        after the server did not answer. A batch sent again after all is stored once (the store
        drops a metric it holds with the same timestamp)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        self._retry(lambda: self.client.log_batch(run_id, metrics=batch), before_resend)

    def last_step(self, run_id: str, key: str) -> int:
        """Return the last step at which the run logged metric `key` (0 when it never did)."""
        history = self._retry(lambda: self.client.get_metric_history(run_id, key))
        return max((m.step for m in history), default=0)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set `tags` on a run in one batch."""
        batch = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        self._retry(lambda: self.client.log_batch(run_id, tags=batch))

    def finish(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """Tag and end a run as FINISHED, KILLED or FAILED, with its `outcome`."""
        tags = tags or {}
        self.set_tags(run_id, {**tags, OUTCOME: outcome(status, tags)})
        self._retry(lambda: self.client.set_terminated(run_id, status=status))

    @contextmanager
    def ending(self, run_id: str) -> Iterator[None]:
        """End `run_id` when the block exits, whichever way: FINISHED after it, KILLED on
        KeyboardInterrupt (tagged `interrupted` with the signal) or SystemExit, FAILED with the
        `error` tag on any other exception. A block ended by TrackingUnreachable leaves the run
        RUNNING (the store takes no write) for `harness close-orphans`, the next sweep or --resume."""
        try:
            yield
        except TrackingUnreachable:
            raise
        except KeyboardInterrupt as exc:
            self._finish_failing(run_id, KILLED, {INTERRUPTED: getattr(exc, "signal_name", "SIGINT")})
            raise
        except SystemExit:
            self._finish_failing(run_id, KILLED, {})
            raise
        except BaseException as exc:
            self._finish_failing(run_id, FAILED, {ERROR: error_text(exc)})
            raise
        self.finish(run_id, FINISHED)

    def _finish_failing(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        """End a run whose block raised; a store that refuses the write too (a full disk) or does
        not answer leaves the run to the next sweep's orphan check and the block's own error stands."""
        try:
            self.finish(run_id, status, tags)
        except (MlflowException, OSError, TrackingUnreachable):
            pass

    def rename(self, run_id: str, name: str) -> None:
        """Give a run a new name."""
        self._retry(lambda: self.client.update_run(run_id, name=name))

    def reopen(self, run_id: str) -> None:
        """Set a run back to RUNNING (a resumed sweep continues in its old parent run), dropping
        the `interrupted`, `orphaned` and `outcome` tags of the interruption it continues after (a
        run continued is no longer its dead driver's)."""
        tags = self._retry(lambda: self.client.get_run(run_id)).data.tags
        for key in (INTERRUPTED, ORPHANED, OUTCOME):
            if key in tags:
                self._retry(functools.partial(self.client.delete_tag, run_id, key))
        self._retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def record_start(self, run_id: str, node_id: str, node_ip: str, placement: dict[str, str] | None = None) -> int:
        """Record that a run (re)started on node `node_id` (with this start's `placement` tags) and
        mark it RUNNING: its first start is its first attempt; a later one (a scheduler's pause
        ending, a retry) adds its node only, as `count_attempt` counts retries. Returns how many
        starts the run has had, this one included."""
        tags = self._retry(lambda: self.client.get_run(run_id)).data.tags
        nodes = _started_on(tags) + [node_id]
        started = {NODE_ID: node_id, NODE_IP: node_ip, NODE_IDS: ",".join(nodes), **(placement or {})}
        self.set_tags(run_id, started if ATTEMPTS in tags else {**started, ATTEMPTS: "1"})
        self.reopen(run_id)
        return len(nodes)

    def starts(self, run_id: str) -> int:
        """Return how many starts `record_start` has recorded for a run."""
        return len(_started_on(self._retry(lambda: self.client.get_run(run_id)).data.tags))

    def count_attempt(self, run_id: str, tags: dict[str, str] | None = None) -> None:
        """Count one more attempt of a run that starts again after a failure (or after its driver
        died while it trained), setting `tags` with it."""
        held = self._retry(lambda: self.client.get_run(run_id)).data.tags
        self.set_tags(run_id, {**(tags or {}), ATTEMPTS: str(int(held.get(ATTEMPTS, "1")) + 1)})

    def child_runs(self, experiment_id: str, parent: str, run_type: RunType) -> list:
        """Return the runs of `run_type` nested directly under `parent`."""
        return self._retry(
            lambda: self.client.search_runs([experiment_id], filter_string=children_filter(parent, run_type))
        )

    def newest_sweep(self, experiment_ids: list[str]) -> Run | None:
        """Return the newest sweep run of those experiments, None when they hold none."""
        runs = self._retry(
            lambda: self.client.search_runs(
                experiment_ids,
                f"tags.{RUN_TYPE} = '{RunType.SWEEP}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
        return runs[0] if runs else None

    def running_under(self, experiment_id: str, root: str) -> list:
        """Return the RUNNING runs nested at any depth under run `root`."""
        running = self._retry(
            lambda: self.client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
        )
        parents: dict[str, str | None] = {r.info.run_id: r.data.tags.get(PARENT) for r in running}

        def under(run_id: str) -> bool:
            seen = set()
            current: str | None = run_id
            while current is not None and current not in seen:
                seen.add(current)
                if current not in parents:
                    run = self._retry(functools.partial(self.client.get_run, current))
                    parents[current] = run.data.tags.get(PARENT)
                current = parents[current]
                if current == root:
                    return True
            return False

        return [r for r in running if r.info.run_id != root and under(r.info.run_id)]

    def kill_running_under(self, experiment_id: str, root: str, tags: dict[str, str]) -> int:
        """End KILLED, with `tags`, every run still RUNNING under run `root`; returns how many."""
        runs = self.running_under(experiment_id, root)
        for run in runs:
            self.finish(run.info.run_id, KILLED, tags)
        return len(runs)

    def find_trial_run(self, experiment_id: str, parent: str, trial_id: str) -> str | None:
        """Return the run id of Ray trial `trial_id` under sweep run `parent`, if one was created."""
        runs = self._retry(
            lambda: self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent}' and tags.{TRIAL_ID} = '{trial_id}'"
            )
        )
        return runs[0].info.run_id if runs else None

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Upload one local file as an artifact of the run."""
        self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_evaluation(self, run_id: str, prefix: str, evaluation: Evaluation, class_names: tuple[str, ...]) -> None:
        """Log a confusion matrix (JSON + PNG), per-image predictions (CSV) and the map galleries
        (PNG overlays of the best and worst predictions) under `prefix`/, and tag `<prefix>_never_predicted`
        with the classes the model never predicts (their precision and F1 are 0)."""
        missing = never_predicted(evaluation.confusion, class_names)
        if missing:
            self.set_tags(run_id, {f"{prefix}_never_predicted": ",".join(missing)})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            matrix = evaluation.confusion
            (folder / "confusion_matrix.json").write_text(
                json.dumps({"classes": list(class_names), "rows_true_cols_pred": matrix.tolist()})
            )
            confusion_png(matrix, class_names, folder / "confusion_matrix.png", title=f"{prefix} confusion matrix")
            evaluation.predictions.to_csv(folder / "predictions.csv", index=False)
            for name, gallery in evaluation.galleries.items():
                gallery_png(
                    gallery, folder / f"maps_{name}.png", title=f"{prefix}: {name} predictions, {gallery.kind} maps"
                )
            self._retry(lambda: self.client.log_artifacts(run_id, str(folder), prefix))


def leaderboard_line(attached_at: str | None) -> str:
    """Return the sweep run description's line about the leaderboard: not yet attached, or attached
    at `attached_at` (the sweep writes the one, `harness leaderboard` the other)."""
    if attached_at is None:
        return f"{LEADERBOARD_LINE} not attached yet; `harness leaderboard` attaches its tables to this run."
    return f"{LEADERBOARD_LINE} attached {attached_at} by `harness leaderboard` (Artifacts, `leaderboard/`)."


def with_leaderboard_line(description: str, line: str) -> str:
    """Return a sweep run's `description` with its leaderboard line replaced by `line` (added when
    it has none)."""
    lines = description.splitlines()
    at = next((i for i, text in enumerate(lines) if text.startswith(LEADERBOARD_LINE)), None)
    if at is None:
        return "\n\n".join(part for part in (description.rstrip(), line) if part)
    return "\n".join([*lines[:at], line, *lines[at + 1 :]])


def outcome(status: str, tags: dict[str, str]) -> str:
    """Return the `outcome` of a run that ends with `status` and `tags`."""
    if status == FAILED:
        return "failed"
    if status == KILLED:
        return "orphaned" if tags.get(ORPHANED) == "true" else "interrupted"
    return "stopped_early" if tags.get(STOPPED_BY) in EARLY_STOPPERS else "completed"


def trial_name(baseline: str, number: int | None, trial_id: str) -> str:
    """Return a trial run's name: its baseline and Optuna trial number, or Ray's trial id until
    the number is known (the searcher links the two at the trial's first result)."""
    return f"{baseline} {trial_id[:8]}" if number is None else f"{baseline} t{number:02d}"


def sweep_name(experiment: str, sweep: str) -> str:
    """Return a sweep run's name: its experiment and the sweep's folder name (`sweep-<UTC time>`),
    the identifier its Optuna studies' names share (`<experiment>/<sweep>/<baseline>`)."""
    return f"{experiment} {sweep}"


# Where `mlflow ui` (and `harness server`) serve a store by default: a run of a store the harness
# writes directly (SQLite, a database, a folder: a bare path) has a URL there once it is served.
LOCAL_UI = "http://127.0.0.1:5000"
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """Return the address of a run's page in the MLflow UI: under the tracking server when the URI
    is one (http, https), under LOCAL_UI for a store written directly (which `mlflow ui
    --backend-store-uri URI` serves there); None for any other URI (databricks, ...)."""
    scheme = tracking_uri.split("://", 1)[0].split("+")[0] if "://" in tracking_uri else None
    if scheme in ("http", "https"):
        base = tracking_uri.rstrip("/")
    elif scheme in STORE_SCHEMES or (scheme is None and "/" in tracking_uri):  # a bare path: a folder store
        base = LOCAL_UI
    else:
        return None
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def fold_name(model: str, fold: int) -> str:
    """Return the name of a run that fits `model` (a baseline or floor) on one fold."""
    return f"{model} fold {fold}"


@functools.cache
def tracker_for(tracking_uri: str) -> Tracker:
    """Return this process's one Tracker of `tracking_uri`: trials, fold tasks and driver callbacks
    share it instead of opening a store (engine and schema check) per call."""
    return Tracker(tracking_uri)


def open_store(tracking_uri: str) -> Tracker:
    """Return this process's Tracker of `tracking_uri` with its store ready: a SQLite file's schema
    is created or upgraded under a lock beside it, since two processes creating it at once race
    MLflow's table creation ("table ... already exists")."""
    with store_lock(tracking_uri):
        tracker = tracker_for(tracking_uri)
        tracker._retry(lambda: tracker.client.search_experiments(max_results=1))
    return tracker
