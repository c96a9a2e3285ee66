"""Search and scheduling for a sweep of several baselines in one Tuner.

Each baseline gets its own Optuna study (its space differs from the others') and its own rungs
(a baseline is never stopped because another baseline learns faster); one Tuner runs them
interleaved so every CPU stays busy. Rungs are ASHA's, or in a reproducible sweep the same rungs
decided synchronously (SynchronousHalving) over suggestions handed out in fixed batches.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.error import TuneError
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from harness import ray_compat, tracking
from harness.atomic import write_atomically
from harness.config import Distribution, SearchSpace
from harness.errors import InputError
from harness.locking import journal_path, sqlite_path, store_lock

from ._keys import DONE_KEY, EPOCH_KEY, FAILED_KEY, RUN_ID_KEY, STUDY_TRIAL_KEY

# User attributes of each Optuna trial that lead to the Ray trial and the MLflow run behind it.
RAY_TRIAL_ATTR = "ray_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"
MLFLOW_RUN_URL_ATTR = "mlflow_run_url"

# Returns the MLflow run of a Ray trial (None if it has none): asked only for a trial that ended
# without a result naming its run (one that failed before its first epoch ended).
RunLinker = Callable[[str], "str | None"]


@dataclass(frozen=True)
class MlflowLinks:
    """Where a sweep's studies lead in MLflow: the tracking store, the experiment and the sweep's run."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    sweep_run_id: str

    def run_url(self, run_id: str) -> str | None:
        """Return the MLflow UI address of the experiment's run `run_id`, None where tracking.run_url has none."""
        return tracking.run_url(self.tracking_uri, self.experiment_id, run_id)

    def study_attrs(self) -> dict[str, str]:
        """Return the user attributes every study of the sweep carries: the store, the experiment,
        the sweep's run and its address, and for a store without a server of its own the command
        that serves these addresses."""
        attrs = {
            "mlflow_tracking_uri": self.tracking_uri,
            "mlflow_experiment": self.experiment,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_sweep_run_id": self.sweep_run_id,
        }
        url = self.run_url(self.sweep_run_id)
        if url is not None:
            attrs["mlflow_sweep_run_url"] = url
            if url.startswith(tracking.LOCAL_UI):
                attrs["mlflow_ui"] = f"the run URLs once served: mlflow ui --backend-store-uri {self.tracking_uri}"
        return attrs


def mark_started(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Mark the asked trial `trial_id` RUNNING from now, which Optuna records as its start; a trial
    already running or ended is left as it is (a trial resumed after a pause keeps its start)."""
    with suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, TrialState.RUNNING)


class StartStudyTrials(tune.Callback):
    """Marks a trial's Optuna trial started when Tune starts the trial, in the studies at `storage`
    (a URL optuna_storage opens) named after `study_prefix`: a suggestion waits (WAITING) until then, so the
    study's start times are the trials' own, not those of suggestions a reproducible sweep makes
    all at once. Runs in the driver, as the searcher does."""

    def __init__(self, storage: str, study_prefix: str) -> None:
        self._url, self._prefix = storage, study_prefix
        self._storage: optuna.storages.BaseStorage | None = None
        self._study_ids: dict[str, int] = {}  # per baseline: its study's id, looked up once

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(STUDY_TRIAL_KEY)
        if number is None:
            return
        self._storage = storage = self._storage or optuna_storage(self._url)
        baseline = trial.config["baseline"]
        if baseline not in self._study_ids:
            self._study_ids[baseline] = storage.get_study_id_from_name(study_name(self._prefix, baseline))
        mark_started(storage, storage.get_trial_id_from_study_id_trial_number(self._study_ids[baseline], number))


def optuna_distribution(spec: Distribution) -> optuna.distributions.BaseDistribution:
    """Return the Optuna distribution of a search-space entry (bounds inclusive)."""
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(spec.values() or [])
    low, high = spec.bounds
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(low), int(high), step=int(spec.step or 1))
    if spec.type == "loguniform":
        return optuna.distributions.FloatDistribution(low, high, log=True)
    return optuna.distributions.FloatDistribution(low, high, step=spec.step)


def recipe_start_point(space: SearchSpace) -> tuple[dict[str, Any] | None, str]:
    """Return the published recipe as a first point to evaluate, or None and the reason it cannot be."""
    missing = sorted(set(space.search) - set(space.recipe))
    if missing:
        return None, f"the recipe gives no value for searched {', '.join(missing)}"
    outside = [k for k, dist in space.search.items() if not dist.contains(space.recipe[k])]
    if outside:
        detail = ", ".join(f"{k}={space.recipe[k]!r}" for k in sorted(outside))
        return None, f"the recipe's {detail} lies outside the searched range"
    return {k: space.recipe[k] for k in space.search}, "the recipe is the first point"


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "bruteforce": optuna.samplers.BruteForceSampler,
}


def build_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Return Optuna's sampler called `name`, seeded (OptunaSearch ignores its own seed once given one)."""
    with warnings.catch_warnings():
        # gp, qmc and bruteforce are marked experimental at construction; the experiment file chose them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](seed=seed)


def study_name(prefix: str, baseline: str) -> str:
    """Return the name of one baseline's Optuna study in a sweep whose studies share `prefix`
    ('<experiment>/<sweep>')."""
    return f"{prefix}/{baseline}"


def start_points(space: SearchSpace, warm: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the points a study evaluates first: the recipe where it fits, then `warm` ones not equal to it."""
    recipe, _ = recipe_start_point(space)
    first = [recipe] if recipe else []
    return first + [p for p in warm if p not in first]


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """Return the storage at `url`, the one way the harness opens it. A journal URL is a log file
    (its folder created), appended to under Optuna's own lock beside it; an RDB URL waits on a
    SQLite lock instead of failing at once, a SQLite file's tables created under a file lock beside
    it (two sweeps may start together)."""
    journal = journal_path(url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    engine = {"connect_args": {"timeout": 60}} if sqlite_path(url) else {}
    with store_lock(url):
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)


@contextmanager
def _outside_optimize() -> Iterator[None]:
    """Tell Optuna a trial's end outside `study.optimize`: the brute-force sampler calls
    `study.stop()` after the last point of its grid, which raises there; Tune's own count of
    suggestions ends the search instead."""
    try:
        yield
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


# The format of a saved searcher state, so a file of another layout is refused by name.
SEARCHER_STATE_FORMAT = "histo-harness searcher state 1"


def read_searcher_state(path: Path) -> dict[str, Any]:
    """Return the searcher state saved in file `path`, read as JSON only (never unpickled); raises
    InputError naming the file when it is a pickle, cut short, or not a state this harness wrote."""
    data = path.read_bytes()
    if data[:1] == b"\x80":  # the opening PROTO opcode of every pickle since protocol 2
        raise InputError(f"{path}: a pickle, not the JSON searcher state this harness writes; it was refused unread")
    try:
        state = json.loads(data)
    except ValueError:
        raise InputError(f"{path}: the searcher state is incomplete (cut short, as a full disk leaves one)") from None
    if not isinstance(state, dict) or state.get("format") != SEARCHER_STATE_FORMAT:
        raise InputError(f"{path}: not a searcher state of this harness (expected format {SEARCHER_STATE_FORMAT!r})")
    return state


def _random_states(sampler: object) -> list[np.random.RandomState]:
    """Return the NumPy random states `sampler` draws from, those of the samplers it falls back to
    included, in a fixed order. Optuna keeps each in a private attribute (a LazyRandomState, whose
    `rng` is the RandomState): tests/sweep/test_search_state.py fails when a sampler's draws no
    longer follow the states found here."""
    found = []
    for value in vars(sampler).values():
        if isinstance(value, optuna.samplers.BaseSampler):
            found += _random_states(value)
        elif isinstance(rng := getattr(value, "rng", None), np.random.RandomState):
            found.append(rng)
    return found


def _sampler_state(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
    """Return the random states of `sampler` as plain data (what a resumed sweep needs to draw the
    same suggestions as one never interrupted)."""
    states = []
    for random_state in _random_states(sampler):
        state = random_state.get_state(legacy=False)
        states.append({**state, "state": {**state["state"], "key": state["state"]["key"].tolist()}})
    return states


def _set_sampler_state(sampler: optuna.samplers.BaseSampler, states: list[dict[str, Any]]) -> None:
    """Set the random states of `sampler` to `states` (from _sampler_state)."""
    found = _random_states(sampler)
    if len(found) != len(states):
        raise ValueError(
            f"{type(sampler).__name__} draws from {len(found)} random states, the saved state has {len(states)}"
        )
    for random_state, state in zip(found, states):
        key = np.array(state["state"]["key"], dtype=np.uint32)
        random_state.set_state({**state, "state": {**state["state"], "key": key}})


class _JsonStateSearcher(Searcher):
    """A Searcher whose state (get_state, set_state: plain data) Tune saves with the experiment's
    state and restores on resume. It is saved as JSON, never pickled: the file lies in Tune's
    storage path, which may be shared, and loading a pickle runs whatever code it names."""

    def save(self, checkpoint_path: str) -> None:
        state = {"format": SEARCHER_STATE_FORMAT, **self.get_state()}
        write_atomically(Path(checkpoint_path), json.dumps(state).encode())

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(read_searcher_state(Path(checkpoint_path)))


class PruningAwareOptunaSearch(_JsonStateSearcher):
    """A Tune searcher over one Optuna study, which holds what MLflow records: one intermediate value
    per epoch, the last included, and the last epoch's objective as the trial's value, COMPLETE for a
    trial that ended by itself, PRUNED for one the scheduler stopped and FAIL for one that failed.

    Suggestions come from `study.ask(space)` (the `points_to_evaluate` enqueued first). Ray 2.60's
    TuneController never passes the result a scheduler answers STOP to through `on_trial_result`
    (only to `on_trial_complete`), nor any result when it stops a PAUSED trial; so each result is
    reported from wherever it arrives, once per epoch. Each suggestion carries its Optuna trial
    number (STUDY_TRIAL_KEY), which names the trial's run; each result carries the run's id, which
    the Optuna trial keeps (with the run's address when `links` are given, which the study carries
    too); `link` finds the run of a trial whose results never named it.

    An asked trial waits (WAITING) until Tune starts it (StartStudyTrials), and is told as it ends,
    so Optuna's start and end times are the trial's. Trials asked and not started are RUNNING
    while another is asked: Optuna's samplers count them, and an ask would take a WAITING one for
    an enqueued point.

    Its state (get_state) names the study, each Ray trial's Optuna trial number, the trials told
    and linked, each trial's last epoch and the sampler's random states. The study itself lives in
    its storage: Tune restores the searcher it pickled when the Tuner was made (whose storage
    reconnects to its URL), then this state, so the searcher carries on in the same study and draws
    what it would have drawn. A study in memory does not outlive its process.
    """

    def __init__(
        self,
        space: dict[str, optuna.distributions.BaseDistribution],
        *,
        metric: str,
        mode: str,
        metric_name: str,
        sampler: optuna.samplers.BaseSampler | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        study_name: str = "optuna",
        storage: optuna.storages.BaseStorage | None = None,
        link: RunLinker | None = None,
        links: MlflowLinks | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._space = space
        # Kept to find trials by number when a saved state is restored.
        self._storage = storage or optuna.storages.InMemoryStorage()
        self._ot_study = optuna.create_study(
            storage=self._storage,
            sampler=sampler or optuna.samplers.TPESampler(),
            # Tune's scheduler stops trials; Optuna's pruner is never asked.
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name,
            load_if_exists=True,
            direction="maximize" if mode == "max" else "minimize",
        )
        for point in points_to_evaluate or []:
            if len(point) != len(space):
                raise ValueError(f"point {point} does not give exactly the searched {sorted(space)}")
            self._ot_study.enqueue_trial(point)
        with warnings.catch_warnings():
            # Optuna marks set_metric_names experimental; the dashboard labels its axes with it.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([metric_name])
        for key, value in (links.study_attrs() if links else {}).items():
            self._ot_study.set_user_attr(key, value)
        self._study_id = self._storage.get_study_id_from_name(study_name)
        self._links = links
        self._ot_trials: dict[str, optuna.Trial] = {}
        self._completed_trials: set[str] = set()
        self._link = link
        self._last: dict[str, dict] = {}
        self._linked: set[str] = set()

    def get_state(self) -> dict[str, Any]:
        """Return what this searcher adds to its study, as plain data: see the class docstring."""
        kept = (self.metric, EPOCH_KEY, DONE_KEY)
        return {
            "study": self._ot_study.study_name,
            "trials": {trial_id: trial.number for trial_id, trial in self._ot_trials.items()},
            "completed": sorted(self._completed_trials),
            "linked": sorted(self._linked),
            "last": {trial_id: {k: r[k] for k in kept if k in r} for trial_id, r in self._last.items()},
            "sampler": _sampler_state(self._ot_study.sampler),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `state` (get_state's) in the same study."""
        study_id = self._storage.get_study_id_from_name(state["study"])
        self._ot_trials = {
            trial_id: optuna.trial.Trial(
                self._ot_study, self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            )
            for trial_id, number in state["trials"].items()
        }
        self._completed_trials, self._linked = set(state["completed"]), set(state["linked"])
        self._last = state["last"]
        # After the trials: building a Trial lets the sampler prepare for it.
        _set_sampler_state(self._ot_study.sampler, state["sampler"])

    def _storage_id(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
        """Return the storage's id of one of this study's trials."""
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)

    def _ask(self) -> optuna.Trial:
        """Return a new trial of the study, left WAITING until Tune starts it (see the class docstring)."""
        # Only the trials asked and not told yet can wait: the rest of the study is never read (an
        # ask stays as cheap at the thousandth trial as at the first).
        pending = (t for ray_id, t in self._ot_trials.items() if ray_id not in self._completed_trials)
        waiting = [i for i in map(self._storage_id, pending) if self._storage.get_trial(i).state == TrialState.WAITING]
        for trial_id in waiting:
            mark_started(self._storage, trial_id)
        trial = self._ot_study.ask(fixed_distributions=self._space)
        for trial_id in [*waiting, self._storage_id(trial)]:
            self._storage.set_trial_state_values(trial_id, TrialState.WAITING)
        return trial

    def suggest(self, trial_id: str) -> dict:
        if trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = self._ask()
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return {**trial.params, STUDY_TRIAL_KEY: trial.number}

    def _record(self, trial_id: str, result: dict) -> None:
        """Report `result`'s objective at its epoch, unless that epoch was reported already (a
        finished function trial's last result reaches the searcher twice)."""
        last = self._last.get(trial_id)
        if last is None or result[EPOCH_KEY] > last[EPOCH_KEY]:
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result[EPOCH_KEY]))
        if last is None or result[EPOCH_KEY] >= last[EPOCH_KEY]:
            self._last[trial_id] = result
        self._link_run(trial_id, result.get(RUN_ID_KEY))

    def _link_run(self, trial_id: str, run_id: str | None) -> None:
        """Keep the id of the trial's MLflow run on its Optuna trial, once."""
        if run_id and trial_id not in self._linked:
            trial = self._ot_trials[trial_id]
            trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
            if self._links is not None and (url := self._links.run_url(run_id)) is not None:
                trial.set_user_attr(MLFLOW_RUN_URL_ATTR, url)
            self._linked.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and not result.get(FAILED_KEY):
            self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        run_id = (result or {}).get(RUN_ID_KEY)
        if run_id is None and trial_id not in self._linked and self._link is not None:
            # A trial that failed before its first result may have opened its run all the same.
            run_id = self._link(trial_id)
        self._link_run(trial_id, run_id)
        if result and result.get(FAILED_KEY):
            self._tell(trial_id, TrialState.FAIL)
            return
        if result and self.metric in result and EPOCH_KEY in result:
            self._record(trial_id, result)
        last = self._last.get(trial_id)
        if error or last is None:
            self._tell(trial_id, TrialState.FAIL if error else TrialState.PRUNED)
        elif last.get(DONE_KEY):
            self._tell(trial_id, TrialState.COMPLETE, float(last[self.metric]))
        else:
            # Optuna gives a pruned trial its last intermediate value: this trial's last epoch.
            self._tell(trial_id, TrialState.PRUNED)

    def _tell(self, trial_id: str, state: TrialState, value: float | None = None) -> None:
        """Tell Optuna, once, how the trial ended (now: its end time)."""
        # A trial Tune ended before it started (or started without StartStudyTrials) still waits.
        mark_started(self._storage, self._storage_id(self._ot_trials[trial_id]))
        with _outside_optimize():
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


def suggestion_order(names: list[str], trials: int) -> list[str]:
    """Return the baseline of each suggestion in the order PerBaselineSearcher hands them out."""
    return [name for _ in range(trials) for name in names]


def batch_brackets(names: list[str], trials: int, batch: int) -> dict[str, list[int]]:
    """Return, per baseline, the size of its bracket in each batch of `batch` suggestions that holds
    any of its trials (a reproducible sweep's trials of one baseline and batch share a bracket)."""
    order = suggestion_order(names, trials)
    sizes: dict[str, list[int]] = {name: [] for name in names}
    for start in range(0, len(order), batch):
        for name, count in Counter(order[start : start + batch]).items():
            sizes[name].append(count)
    return sizes


class PerBaselineSearcher(_JsonStateSearcher):
    """Hands out `trials` suggestions per baseline, round-robin, each from that baseline's own study.

    `starts` are points each study evaluates first (the recipe, a previous sweep's best); the
    studies live in `storage` (a URL optuna_storage opens) under `study_name(study_prefix..., baseline)`, their
    value named `metric_name`; `link` ties each Optuna trial to its MLflow run, and `links` lead
    from the studies and their trials to MLflow's pages.
    """

    def __init__(
        self,
        spaces: dict[str, SearchSpace],
        *,
        metric: str,
        mode: str,
        trials: int,
        sampler: str,
        seed: int,
        starts: dict[str, list[dict[str, Any]]] | None = None,
        storage: str | None = None,
        study_prefix: str = "sweep",
        metric_name: str = "objective",
        link: RunLinker | None = None,
        links: MlflowLinks | None = None,
    ) -> None:
        # Tune forwards metric/mode to a searcher only when the Tuner has a param_space, which ours
        # has not (each study owns its space), so they come here from the same config as TuneConfig.
        super().__init__(metric=metric, mode=mode)
        self._order = suggestion_order(list(spaces), trials)
        self._owner: dict[str, str] = {}
        self._children: dict[str, PruningAwareOptunaSearch] = {}
        for index, (name, space) in enumerate(spaces.items()):
            self._children[name] = PruningAwareOptunaSearch(
                space={k: optuna_distribution(d) for k, d in space.search.items()},
                metric=metric,
                mode=mode,
                sampler=build_sampler(sampler, seed + index),
                points_to_evaluate=(starts or {}).get(name) or None,
                study_name=study_name(study_prefix, name),
                storage=optuna_storage(storage) if storage else None,
                metric_name=metric_name,
                link=link,
                links=links,
            )

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return (metric in (None, self.metric)) and (mode in (None, self.mode))

    def get_state(self) -> dict[str, Any]:
        """Return which baseline each Ray trial belongs to and each study's searcher state."""
        return {"owner": self._owner, "studies": {name: child.get_state() for name, child in self._children.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `state` (get_state's): the same suggestions handed out, in the same studies."""
        self._owner = dict(state["owner"])
        for name, child in self._children.items():
            child.set_state(state["studies"][name])

    # Tune's annotation leaves out Searcher.FINISHED, which its own searchers return too.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        if len(self._owner) >= len(self._order):
            return Searcher.FINISHED
        name = self._order[len(self._owner)]
        self._owner[trial_id] = name
        return {"baseline": name, **self._children[name].suggest(trial_id)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._children[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._children[self._owner[trial_id]].on_trial_complete(trial_id, result, error)


def batched(searcher: PerBaselineSearcher, batch: int) -> ConcurrencyLimiter:
    """Return `searcher` handing out `batch` suggestions at a time, the next batch only once every
    trial of the last one has ended (Tune then adds a whole batch in one step: its pending-trial
    cap is this limiter's `max_concurrent`); each trial's end is told as it comes."""
    return ray_compat.EndsAsTheyComeLimiter(searcher, max_concurrent=batch, batch=True)


def halving_steps(max_t: int, grace_period: int, reduction_factor: float) -> int:
    """Return how many halvings take a bracket from `grace_period` epochs to `max_t` (ASHA's rungs)."""
    return max(0, math.ceil(math.log(max_t / grace_period) / math.log(reduction_factor) - 1e-9))


class _Bracket:
    """Trials halved together: the live ones with their last result, the rung (epoch) they run to
    next, how many of them that rung keeps, and the halvings left."""

    def __init__(self, size: int, rung: int, max_t: int, eta: float, halvings: int) -> None:
        self.live: dict[str, tuple[Any, dict | None]] = {}  # trial id -> (trial, last result)
        self.trials: list[Any] = []
        self.keep, self.rung, self.max_t, self.eta, self.halvings = size, rung, max_t, eta, halvings
        # Paused trials that a halving kept, which may run again (the tests read this name).
        self.trials_to_unpause: set[Any] = set()

    @staticmethod
    def epoch(result: dict | None) -> int:
        """Return the epoch of `result` (0 before the first)."""
        return 0 if result is None else result[EPOCH_KEY]

    def short_of_rung(self, trial: Any) -> bool:
        """Return whether `trial` has yet to reach the rung."""
        return self.epoch(self.live[trial.trial_id][1]) < self.rung

    def rung_reached(self) -> bool:
        """Return whether every live trial reached the rung (True when none is live)."""
        return all(self.epoch(result) >= self.rung for _, result in self.live.values())

    def finished(self) -> bool:
        """Return whether every live trial reached the last rung."""
        return self.halvings == 0 and self.rung_reached()

    def _next_rung(self) -> None:
        assert self.halvings > 0
        self.halvings -= 1
        self.keep = math.ceil(self.keep / self.eta)
        self.rung = int(min(self.rung * self.eta, self.max_t))

    def catch_up(self) -> None:
        """Move a bracket rebuilt from a resumed sweep's trials past the halvings it had made: a
        halving happens as the last live trial reaches a rung, so every rung all live trials had
        reached was decided (its losers are among the ended trials). Frees the held trials short of
        the rung it then waits at (all of them once it has none left: they end by themselves)."""
        while self.halvings > 0 and self.live and self.rung_reached():
            self._next_rung()
        for trial, _ in self.live.values():
            if trial.status == Trial.PAUSED and (self.short_of_rung(trial) or self.finished()):
                self.trials_to_unpause.add(trial)

    def halve(self, metric: str, sign: float) -> tuple[list[Any], list[Any]]:
        """Move to the next rung; returns the trials it keeps (the best 1/eta of the bracket's size)
        and the others. Ties keep the order trials were suggested in, never the order results came."""
        self._next_rung()
        # Every live trial has a result here: it reached the rung.
        ranked = sorted(self.live.values(), key=lambda entry: sign * (entry[1] or {})[metric])
        trials = [trial for trial, _ in ranked]
        return trials[-self.keep :], trials[: -self.keep]

    def __repr__(self) -> str:
        statuses = Counter(t.status for t in self.trials)
        return f"Bracket(keeps {self.keep}, rung {self.rung}, {dict(sorted(statuses.items()))})"


class SynchronousHalving(FIFOScheduler):
    """Successive halving at ASHA's rungs (grace_period x reduction_factor^k epochs, capped at
    max_t) in brackets of fixed sizes, filled in the order trials were suggested: a trial waits PAUSED
    at each rung until every live trial of its bracket has reached it, then the best
    1/reduction_factor of the bracket go on. Decisions depend on results, not on arrival order.

    A trial that ends by itself or fails processes its bracket at any rung, as does one Tune
    removes. Time is the trial's epoch, which a paused trial resumed from its checkpoint carries
    on from. Paused losers are stopped through Tune's controller (harness.ray_compat).

    A resumed sweep (`Tuner.restore`) adds every saved trial again, and the brackets fill as before
    (by suggestion order); an ended trial had left its bracket, and an unfinished one that had
    reported is held (as if paused) until its bracket has caught up with the halvings it had made
    (`_Bracket.catch_up`, before the first decision): the resumed sweep stops and promotes the
    trials the uninterrupted one would have.
    """

    def __init__(
        self,
        *,
        metric: str | None,
        mode: str | None,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        sizes: list[int],
    ) -> None:
        super().__init__()
        self._objective = metric
        self._sign = 1.0 if mode == "max" else -1.0
        self._max_t, self._eta, self._grace = max_t, reduction_factor, grace_period
        self._sizes = list(sizes)
        self._halvings = halving_steps(max_t, grace_period, reduction_factor)
        # Every bracket, in the order they were filled (one round of them: the tests read this name).
        self._hyperbands: list[list[_Bracket]] = [[]]
        self._bracket_of: dict[str, _Bracket] = {}
        self._room = 0
        self._processing = False
        self._stopped = 0
        # Trials added since the last decision, not yet in a bracket.
        self._added: list[Any] = []

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        # Only a resumed sweep adds a trial that reported already.
        if trial.status not in (Trial.TERMINATED, Trial.ERROR) and EPOCH_KEY in ray_compat.restored_result(trial):
            ray_compat.hold_restored(trial)
        self._added.append(trial)

    def _next_bracket(self) -> _Bracket:
        """Return the bracket the next trial goes in: the last one, or a new one when it is full."""
        if self._room == 0:
            # More trials than planned (none in a reproducible sweep) get a bracket each.
            self._room = self._sizes.pop(0) if self._sizes else 1
            self._hyperbands[0].append(_Bracket(self._room, self._grace, self._max_t, self._eta, self._halvings))
        return self._hyperbands[0][-1]

    def _settle(self) -> None:
        """Put the trials added since the last decision in their brackets, in the order their study
        suggested them (Tune adds a new sweep's trials in that order, a resumed sweep's in no set
        order), and bring each bracket rebuilt by a resumed sweep up to its rung."""
        restored: list[_Bracket] = []
        for trial in sorted(self._added, key=lambda t: t.config[STUDY_TRIAL_KEY]):
            bracket = self._next_bracket()
            bracket.trials.append(trial)
            self._bracket_of[trial.trial_id] = bracket
            self._room -= 1
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                continue  # a resumed sweep's trial that had ended, leaving its bracket then
            result = ray_compat.restored_result(trial)
            bracket.live[trial.trial_id] = (trial, result if EPOCH_KEY in result else None)
            if EPOCH_KEY in result and bracket not in restored:
                restored.append(bracket)
        self._added.clear()
        for bracket in restored:
            bracket.catch_up()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._settle()
        bracket = self._bracket_of[trial.trial_id]
        assert trial.trial_id in bracket.live, f"a result of {trial.trial_id}, which its bracket has let go"
        bracket.live[trial.trial_id] = (trial, result)
        bracket.trials_to_unpause.discard(trial)
        if bracket.short_of_rung(trial):
            return TrialScheduler.CONTINUE
        return self._process(tune_controller, bracket)

    def _process(self, tune_controller: Any, bracket: _Bracket) -> str:
        """Halve `bracket` if every live trial reached its rung; returns the action for the trial
        being processed (PAUSE while others have yet to arrive)."""
        # Stopping a paused loser re-enters through on_trial_remove; that call must not decide again.
        if self._processing:
            return TrialScheduler.PAUSE
        self._processing = True
        try:
            return self._halve(tune_controller, bracket)
        finally:
            self._processing = False

    def _halve(self, tune_controller: Any, bracket: _Bracket) -> str:
        """Stop the losers of a bracket whose live trials all reached the rung and free the winners;
        returns the action for the trial reporting (the only one RUNNING: the others wait PAUSED)."""
        if not bracket.rung_reached():
            return TrialScheduler.PAUSE
        if bracket.finished():
            for trial, _ in list(bracket.live.values()):
                if trial.status == Trial.PAUSED:
                    ray_compat.stop_trial(tune_controller, trial)
            return TrialScheduler.STOP
        good, bad = bracket.halve(self._objective or "", self._sign)
        self._stopped += len(bad)
        action = TrialScheduler.PAUSE
        for trial in bad:
            action = self._end(tune_controller, bracket, trial, action)
        for trial in good:
            if bracket.short_of_rung(trial):
                assert trial.status not in (Trial.ERROR, Trial.TERMINATED), f"{trial} kept but {trial.status}"
                if ray_compat.is_paused(trial):
                    bracket.trials_to_unpause.add(trial)
                elif trial.status == Trial.RUNNING:
                    action = TrialScheduler.CONTINUE
            elif bracket.finished() and (ray_compat.is_paused(trial) or trial.status == Trial.RUNNING):
                action = self._end(tune_controller, bracket, trial, action)
        return action

    @staticmethod
    def _end(tune_controller: Any, bracket: _Bracket, trial: Any, action: str) -> str:
        """Stop `trial`: through Tune if it waits paused, by answering STOP if it is the one
        reporting; returns the action for the reporting trial."""
        if ray_compat.is_paused(trial):
            ray_compat.stop_trial(tune_controller, trial)
            return action
        if trial.status == Trial.RUNNING:
            bracket.live.pop(trial.trial_id, None)
            return TrialScheduler.STOP
        # A pending trial has no result at the rung, and an ended one left the bracket.
        raise TuneError(f"trial {trial} to stop is {trial.status}")

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._settle()
        bracket = self._bracket_of[trial.trial_id]
        bracket.live.pop(trial.trial_id, None)
        if not bracket.finished():
            self._process(tune_controller, bracket)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # A paused trial runs again only once a halving kept it; a pending one may start.
        self._settle()
        for bracket in self._hyperbands[0]:
            for trial, _ in bracket.live.values():
                freed = trial.status == Trial.PAUSED and trial in bracket.trials_to_unpause
                if freed or trial.status == Trial.PENDING:
                    return trial
        return None

    def debug_string(self) -> str:
        brackets = "".join(f"\n  {bracket}" for bracket in self._hyperbands[0])
        return f"Synchronous halving: {self._stopped} stopped, {len(self._hyperbands[0])} brackets{brackets}"


class PerBaselineScheduler(FIFOScheduler):
    """One scheduler per baseline, so rungs compare trials of the same model only: ASHA, or with
    `brackets` (each baseline's bracket sizes) SynchronousHalving."""

    def __init__(
        self, *, max_t: int, grace_period: int, reduction_factor: float, brackets: dict[str, list[int]] | None = None
    ) -> None:
        super().__init__()
        self._max_t, self._grace_period, self._reduction_factor = max_t, grace_period, reduction_factor
        self._brackets = brackets
        self._groups: dict[str, TrialScheduler] = {}
        self._objective: str | None = None
        self._mode: str | None = None

    @property
    def metric(self) -> str | None:
        """Return the metric the rungs compare, which Tune checks every result for."""
        return self._objective

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._objective, self._mode = metric, mode
        return True

    def _group(self, trial: Any) -> TrialScheduler:
        name = trial.config["baseline"]
        if name not in self._groups:
            if self._brackets is None:
                self._groups[name] = ASHAScheduler(
                    time_attr="training_iteration",
                    metric=self._objective,
                    mode=self._mode,
                    max_t=self._max_t,
                    grace_period=self._grace_period,
                    reduction_factor=self._reduction_factor,
                )
            else:
                self._groups[name] = SynchronousHalving(
                    metric=self._objective,
                    mode=self._mode,
                    sizes=self._brackets.get(name, []),
                    max_t=self._max_t,
                    grace_period=self._grace_period,
                    reduction_factor=self._reduction_factor,
                )
        return self._groups[name]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._group(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(FAILED_KEY):
            return TrialScheduler.CONTINUE  # the trial ends right after this result
        return self._group(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result.get(FAILED_KEY):
            # A failed trial leaves its rungs as a removed one does, without a score.
            self._group(trial).on_trial_remove(tune_controller, trial)
            return
        self._group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._group(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._group(trial).on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # Each group knows which of its paused trials may run again (none under ASHA, which never pauses).
        for group in self._groups.values():
            trial = group.choose_trial_to_run(tune_controller)
            if trial is not None:
                return trial
        return None

    def debug_string(self) -> str:
        return "\n".join(f"{name}: {group.debug_string()}" for name, group in self._groups.items())
