"""Search and scheduling for a sweep of several baselines in one Tuner.

Each baseline gets its own Optuna study (its space differs from the others') and its own ASHA
rungs (a baseline is never stopped because another baseline learns faster); one Tuner runs them
interleaved so every CPU stays busy.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from harness.config import Distribution, SearchSpace

# Reported by every trial at every epoch: 1.0 on the epoch the trial ended by itself
# (budget spent or early stopping), 0.0 before. A trial whose last report says 0 was stopped by ASHA.
DONE_KEY = "trial_done"


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
    """Return the RDB storage at `url`, waiting on a SQLite lock instead of failing at once."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED, not COMPLETE, for a trial ASHA stopped early.

    Ray's OptunaSearch completes any trial whose last result has the metric, so a trial stopped
    at epoch 2 would enter TPE as finished with its early score (NOTES-ray-optuna-mlflow.md).
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get(DONE_KEY) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        except RuntimeError:
            # Already told before the driver died and the sweep was resumed.
            pass
        self._completed_trials.add(trial_id)


class PerBaselineSearcher(Searcher):
    """Hands out `trials` suggestions per baseline, round-robin, each from that baseline's own study.

    `starts` are points each study evaluates first (the recipe, a previous sweep's best); the
    studies live in `storage` (an RDB URL) under `study_name(study_prefix..., baseline)`.
    """

    def __init__(
        self, spaces: dict[str, SearchSpace], *, metric: str, mode: str, trials: int, sampler: str, seed: int,
        starts: dict[str, list[dict[str, Any]]] | None = None, storage: str | None = None, study_prefix: str = "sweep",
    ) -> None:
        # Tune forwards metric/mode to a searcher only when the Tuner has a param_space, which ours
        # has not (each study owns its space), so they come here from the same config as TuneConfig.
        super().__init__(metric=metric, mode=mode)
        self._trials = trials
        self._spaces = spaces
        self._issued = dict.fromkeys(spaces, 0)
        self._owner: dict[str, str] = {}
        self._next = 0
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
            )

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return (metric in (None, self._metric)) and (mode in (None, self._mode))

    def suggest(self, trial_id: str) -> dict | str | None:
        names = list(self._spaces)
        for _ in range(len(names)):
            name = names[self._next % len(names)]
            self._next += 1
            if self._issued[name] < self._trials:
                self._issued[name] += 1
                self._owner[trial_id] = name
                return {"baseline": name, **self._children[name].suggest(trial_id)}
        return Searcher.FINISHED

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


class PerBaselineASHA(FIFOScheduler):
    """One ASHAScheduler per baseline, so rungs compare trials of the same model only."""

    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self._asha_args = dict(
            time_attr="training_iteration", max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor
        )
        self._groups: dict[str, ASHAScheduler] = {}
        self._metric: str | None = None
        self._mode: str | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def _group(self, trial: Any) -> ASHAScheduler:
        name = trial.config["baseline"]
        if name not in self._groups:
            self._groups[name] = ASHAScheduler(metric=self._metric, mode=self._mode, **self._asha_args)
        return self._groups[name]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._group(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._group(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._group(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{name}: {asha.debug_string()}" for name, asha in self._groups.items())
