"""Search and scheduling for a sweep of several baselines in one Tuner.

Each baseline gets its own Optuna study (its space differs from the others') and its own rungs
(a baseline is never stopped because another baseline learns faster); one Tuner runs them
interleaved so every CPU stays busy. Rungs are ASHA's, or in a reproducible sweep the same rungs
decided synchronously (SynchronousHalving) over suggestions handed out in fixed batches.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler
from ray.tune.schedulers.hyperband import _Bracket
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from harness.config import Distribution, SearchSpace
from harness.locking import sqlite_path, store_lock

from ._keys import DONE_KEY, EPOCH_KEY, FAILED_KEY, RUN_ID_KEY, STUDY_TRIAL_KEY

# User attributes of each Optuna trial that lead to the Ray trial and the MLflow run behind it.
RAY_TRIAL_ATTR = "ray_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"

# Returns the MLflow run of a Ray trial (None if it has none): asked only for a trial that ended
# without a result naming its run (one that failed before its first epoch ended).
RunLinker = Callable[[str], "str | None"]


def optuna_distribution(spec: Distribution) -> optuna.distributions.BaseDistribution:
    """Return the Optuna distribution of a search-space entry (bounds inclusive)."""
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(spec.choices)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), step=int(spec.step or 1))
    if spec.type == "loguniform":
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=True)
    return optuna.distributions.FloatDistribution(spec.low, spec.high, step=spec.step)


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


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Return the RDB storage at `url`, waiting on a SQLite lock instead of failing at once; a
    SQLite file's tables are created under a file lock beside it (two sweeps may start together)."""
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


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds what MLflow records: one intermediate value per epoch, the
    last included, and the last epoch's objective as the trial's value, COMPLETE for a trial that
    ended by itself and PRUNED for one the scheduler stopped.

    Ray's OptunaSearch completes any trial whose last result has the metric, and Ray 2.60's
    TuneController never passes the result a scheduler answers STOP to through `on_trial_result`
    (only to `on_trial_complete`), nor any result when it stops a PAUSED trial; so each result is
    reported from wherever it arrives, once per epoch. Each suggestion carries its Optuna trial
    number (STUDY_TRIAL_KEY), which names the trial's run; each result carries the run's id, which
    the Optuna trial keeps; `link` finds the run of a trial whose results never named it.
    """

    def __init__(self, *args: Any, metric_name: str, link: RunLinker | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with warnings.catch_warnings():
            # Optuna marks set_metric_names experimental; the dashboard labels its axes with it.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([metric_name])
        self._link = link
        self._last: dict[str, dict] = {}
        self._linked: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return {**params, STUDY_TRIAL_KEY: trial.number}

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
            self._ot_trials[trial_id].set_user_attr(MLFLOW_RUN_ATTR, run_id)
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
            with _outside_optimize():
                super().on_trial_complete(trial_id, None, error)
            return
        if last.get(DONE_KEY):
            self._tell(trial_id, TrialState.COMPLETE, float(last[self.metric]))
        else:
            # Optuna gives a pruned trial its last intermediate value: this trial's last epoch.
            self._tell(trial_id, TrialState.PRUNED)

    def _tell(self, trial_id: str, state: TrialState, value: float | None = None) -> None:
        """Tell Optuna, once, how the trial ended."""
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


class PerBaselineSearcher(Searcher):
    """Hands out `trials` suggestions per baseline, round-robin, each from that baseline's own study.

    `starts` are points each study evaluates first (the recipe, a previous sweep's best); the
    studies live in `storage` (an RDB URL) under `study_name(study_prefix..., baseline)`, their
    value named `metric_name`; `link` ties each Optuna trial to its MLflow run.
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
            )

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return (metric in (None, self._metric)) and (mode in (None, self._mode))

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self._owner) >= len(self._order):
            return Searcher.FINISHED
        name = self._order[len(self._owner)]
        self._owner[trial_id] = name
        return {"baseline": name, **self._children[name].suggest(trial_id)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._children[self._owner[trial_id]].on_trial_result(trial_id, result)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._children[self._owner[trial_id]].on_trial_complete(trial_id, result, error)


def batched(searcher: PerBaselineSearcher, batch: int) -> ConcurrencyLimiter:
    """Return `searcher` handing out `batch` suggestions at a time, the next batch only once every
    trial of the last one has ended (Tune then adds a whole batch in one step: its pending-trial
    cap is this limiter's `max_concurrent`)."""
    return ConcurrencyLimiter(searcher, max_concurrent=batch, batch=True)


def halving_steps(max_t: int, grace_period: int, reduction_factor: float) -> int:
    """Return how many halvings take a bracket from `grace_period` epochs to `max_t` (ASHA's rungs)."""
    return max(0, math.ceil(math.log(max_t / grace_period) / math.log(reduction_factor) - 1e-9))


class SynchronousHalving(HyperBandScheduler):
    """Successive halving at ASHA's rungs (grace_period x reduction_factor^k epochs, capped at
    max_t) in brackets of fixed sizes, filled in the order trials are added: a trial waits PAUSED
    at each rung until every live trial of its bracket has reached it, then the best
    1/reduction_factor of the bracket go on. Decisions depend on results, not on arrival order.

    Ray's HyperBandScheduler supplies the pausing and resuming; its own brackets (sized from max_t
    alone, the first never halving) are replaced, and a trial that ends by itself or fails
    processes its bracket at any rung (Ray 2.60 only does so before the first halving). Time is
    the trial's epoch, which a paused trial resumed from its checkpoint carries on from.
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
        super().__init__(time_attr=EPOCH_KEY, metric=metric, mode=mode, max_t=max_t, reduction_factor=reduction_factor)
        self._sizes = list(sizes)
        self._grace = grace_period
        self._halvings = halving_steps(max_t, grace_period, reduction_factor)
        self._room = 0
        self._processing = False

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if self._room == 0:
            # More trials than planned (none in a reproducible sweep) get a bracket each.
            self._room = self._sizes.pop(0) if self._sizes else 1
            bracket = _Bracket(
                time_attr=self._time_attr,
                max_trials=self._room,
                init_t_attr=self._grace,
                max_t_attr=self._max_t_attr,
                eta=self._eta,
                s=self._halvings,
            )
            self._hyperbands[0].append(bracket)
            self._state["bracket"] = bracket
        self._state["bracket"].add_trial(trial)
        self._trial_info[trial] = self._state["bracket"], 0
        self._room -= 1

    def _process_bracket(self, tune_controller: Any, bracket: _Bracket) -> str:
        # Stopping a paused loser re-enters through on_trial_remove; that call must not decide again.
        if self._processing:
            return TrialScheduler.PAUSE
        self._processing = True
        try:
            return super()._process_bracket(tune_controller, bracket)
        finally:
            self._processing = False

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        bracket, _ = self._trial_info[trial]
        bracket.cleanup_trial(trial)
        if not bracket.finished():
            self._process_bracket(tune_controller, bracket)


class PerBaselineScheduler(FIFOScheduler):
    """One scheduler per baseline, so rungs compare trials of the same model only: ASHA, or with
    `brackets` (each baseline's bracket sizes) SynchronousHalving."""

    def __init__(
        self, *, max_t: int, grace_period: int, reduction_factor: float, brackets: dict[str, list[int]] | None = None
    ) -> None:
        super().__init__()
        self._args = dict(max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
        self._brackets = brackets
        self._groups: dict[str, TrialScheduler] = {}
        self._metric: str | None = None
        self._mode: str | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def _group(self, trial: Any) -> TrialScheduler:
        name = trial.config["baseline"]
        if name not in self._groups:
            if self._brackets is None:
                self._groups[name] = ASHAScheduler(
                    time_attr="training_iteration", metric=self._metric, mode=self._mode, **self._args
                )
            else:
                self._groups[name] = SynchronousHalving(
                    metric=self._metric, mode=self._mode, sizes=self._brackets.get(name, []), **self._args
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
