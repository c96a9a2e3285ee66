"""The harness's own searcher and scheduler: a searcher restored from its saved state (JSON) carries
on in its Optuna study drawing what it would have drawn, synchronous halving stops a paused
loser through Tune's controller, and its brackets rebuilt by a resumed sweep decide as before."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from harness.config import load_search_space
from harness.sweep._search import (
    DONE_KEY,
    EPOCH_KEY,
    SAMPLERS,
    SEARCHER_STATE_FORMAT,
    STUDY_TRIAL_KEY,
    PerBaselineSearcher,
    PruningAwareOptunaSearch,
    SynchronousHalving,
    build_sampler,
    optuna_storage,
    start_points,
    study_name,
)


def _result(value: float, epoch: int, done: bool = False) -> dict:
    return {"objective": value, "training_iteration": epoch, EPOCH_KEY: epoch, DONE_KEY: float(done)}


def _number(suggestion: dict | str | None) -> int:
    """Return the Optuna trial number a suggestion carries."""
    assert isinstance(suggestion, dict)
    return suggestion[STUDY_TRIAL_KEY]


def _searcher(url: str) -> PerBaselineSearcher:
    space = load_search_space("cancernet")
    return PerBaselineSearcher(
        {"cancernet": space},
        metric="objective",
        mode="max",
        trials=3,
        sampler="random",
        seed=0,
        starts={"cancernet": start_points(space, [])},
        storage=url,
        study_prefix="exp/sweep",
    )


# The storages the harness opens: an RDB (SQLite here) and Optuna's journal file.
STORAGES = {"sqlite": "sqlite:///{}/optuna.db", "journal": "journal://{}/optuna.log"}


@pytest.mark.parametrize("kind", list(STORAGES))
def test_a_restored_searcher_carries_on_in_its_study(tmp_path: Path, kind: str) -> None:
    url = STORAGES[kind].format(tmp_path)
    searcher = _searcher(url)
    # Tuner.restore rebuilds the searcher from the copy pickled when the Tuner was made, then
    # restores the state the running one saved last.
    at_start = pickle.dumps(searcher)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    searcher.on_trial_result("t1", _result(0.6, 1))
    searcher.on_trial_complete("t2", _result(0.4, 1))
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t1", _result(0.7, 2))
    restored.on_trial_complete("t1", _result(0.8, 3, done=True))
    third = restored.suggest("t3")

    assert [_number(s) for s in (first, second, third)] == [0, 1, 2]
    study = optuna.load_study(study_name=study_name("exp/sweep", "cancernet"), storage=optuna_storage(url))
    trials = {t.number: (t.state, t.value, t.intermediate_values, t.user_attrs["ray_trial_id"]) for t in study.trials}
    assert trials == {
        0: (TrialState.COMPLETE, 0.8, {1: 0.6, 2: 0.7, 3: 0.8}, "t1"),
        1: (TrialState.PRUNED, 0.4, {1: 0.4}, "t2"),
        2: (TrialState.WAITING, None, {}, "t3"),  # suggested; Tune has not started it
    }


def _three_trials_then(searcher: PruningAwareOptunaSearch) -> None:
    """Suggest three trials: one reports and completes, one is pruned, one stays running."""
    for trial_id in ("t1", "t2", "t3"):
        searcher.suggest(trial_id)
    searcher.on_trial_result("t1", _result(0.6, 1))
    searcher.on_trial_complete("t1", _result(0.7, 2, done=True))
    searcher.on_trial_complete("t2", _result(0.4, 1))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_restored_searcher_draws_what_it_would_have_drawn(tmp_path: Path, sampler: str) -> None:
    # Discrete dimensions only: the brute-force sampler takes nothing else.
    space = {
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True, step=None)
        if sampler != "bruteforce"
        else optuna.distributions.IntDistribution(1, 50),
        "batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32, 64]),
    }

    def searcher(name: str) -> PruningAwareOptunaSearch:
        storage = optuna_storage(f"sqlite:///{tmp_path / name}.db")
        return PruningAwareOptunaSearch(
            space, metric="objective", mode="max", metric_name="acc", sampler=build_sampler(sampler, 3), storage=storage
        )

    straight = searcher("straight")
    _three_trials_then(straight)
    interrupted = searcher("interrupted")
    at_start = pickle.dumps(interrupted)
    _three_trials_then(interrupted)
    interrupted.save(str(tmp_path / "state"))
    assert json.loads((tmp_path / "state").read_text())["format"] == SEARCHER_STATE_FORMAT
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "state"))
    restored.on_trial_complete("t3", _result(0.5, 1))
    straight.on_trial_complete("t3", _result(0.5, 1))
    assert restored.suggest("t4") == straight.suggest("t4")


class _Trial:
    """The parts of a Tune trial a scheduler reads (and a restored one's last result)."""

    def __init__(self, trial_id: str, status: str = Trial.RUNNING, last: dict | None = None) -> None:
        self.trial_id, self.status, self.is_saving = trial_id, status, False
        self.config = {STUDY_TRIAL_KEY: ord(trial_id)}  # suggested in the order of their names
        self.run_metadata = SimpleNamespace(last_result=last or {})

    def set_status(self, status: str) -> None:
        self.status = status


class _Controller:
    """Records the trials a scheduler asks Tune to stop, and does what Tune then does."""

    def __init__(self, scheduler: SynchronousHalving) -> None:
        self.scheduler, self.stopped = scheduler, list[str]()

    def stop_trial(self, trial: _Trial) -> None:
        self.stopped.append(trial.trial_id)
        self.scheduler.on_trial_remove(self, trial)
        trial.status = Trial.TERMINATED


def test_a_trial_that_ends_by_itself_lets_its_bracket_halve_at_a_later_rung() -> None:
    # Rungs at epochs 1, 2 and 4 (max_t 4); Ray's HyperBand halved on a removal before the first halving only.
    rungs = {"max_t": 4, "grace_period": 1, "reduction_factor": 2}
    scheduler = SynchronousHalving(metric="objective", mode="max", sizes=[4], **rungs)
    controller = _Controller(scheduler)
    trials = {name: _Trial(name) for name in "abcd"}
    for trial in trials.values():
        scheduler.on_trial_add(controller, trial)
    for name, value in zip("abcd", (0.9, 0.8, 0.2, 0.1)):
        action = scheduler.on_trial_result(controller, trials[name], _result(value, 1))
        if action == TrialScheduler.PAUSE:
            trials[name].status = Trial.PAUSED
    # d, the last to arrive, is told to stop; c, paused, is stopped through the controller.
    assert action == TrialScheduler.STOP and trials["c"].status == Trial.TERMINATED
    trials["d"].status = Trial.TERMINATED
    scheduler.on_trial_complete(controller, trials["d"], _result(0.1, 1))
    # a and b go on to rung 2; a waits there, then b ends by itself (a crash, say) before it.
    for name in "ab":
        assert scheduler.choose_trial_to_run(controller) in (trials["a"], trials["b"])
        trials[name].status = Trial.RUNNING
    assert scheduler.on_trial_result(controller, trials["a"], _result(0.9, 2)) == TrialScheduler.PAUSE
    trials["a"].status = Trial.PAUSED
    scheduler.on_trial_error(controller, trials["b"])
    # The bracket halves without b: a is kept and may run again.
    assert scheduler.choose_trial_to_run(controller) is trials["a"]
    assert controller.stopped == ["c"]
    assert scheduler.debug_string().startswith("Synchronous halving: 2 stopped, 1 brackets")


def _restored(scheduler: SynchronousHalving, controller: _Controller, trials: dict[str, _Trial]) -> None:
    """Add `trials` to `scheduler` as Tuner.restore does: unfinished ones PENDING, in no set order."""
    for name in sorted(trials, reverse=True):
        scheduler.on_trial_add(controller, trials[name])


def _report(scheduler: SynchronousHalving, controller: _Controller, trial: _Trial, value: float, epoch: int) -> str:
    """Run `trial` to a result, as Tune does, and apply the scheduler's answer to its status."""
    trial.status = Trial.RUNNING
    action = scheduler.on_trial_result(controller, trial, _result(value, epoch))
    trial.status = {TrialScheduler.PAUSE: Trial.PAUSED, TrialScheduler.STOP: Trial.TERMINATED}.get(action, trial.status)
    return action


def test_a_resumed_bracket_waiting_at_a_rung_halves_on_the_results_at_that_rung() -> None:
    # Killed while a and b waited paused at rung 1 and c and d had yet to reach it.
    rungs = {"max_t": 2, "grace_period": 1, "reduction_factor": 2}
    scheduler = SynchronousHalving(metric="objective", mode="max", sizes=[4], **rungs)
    controller = _Controller(scheduler)
    trials = {
        "a": _Trial("a", Trial.PENDING, _result(0.9, 1)),
        "b": _Trial("b", Trial.PENDING, _result(0.2, 1)),
        "c": _Trial("c", Trial.PENDING),
        "d": _Trial("d", Trial.PENDING),
    }
    _restored(scheduler, controller, trials)
    # a and b wait at the rung (they would otherwise train past it before the bracket decides).
    assert [t.status for t in trials.values()] == [Trial.PAUSED, Trial.PAUSED, Trial.PENDING, Trial.PENDING]
    assert scheduler.choose_trial_to_run(controller) is trials["c"]
    assert _report(scheduler, controller, trials["c"], 0.8, 1) == TrialScheduler.PAUSE
    # The rung's four results decide, as they would have without the interruption: b and d stop.
    assert _report(scheduler, controller, trials["d"], 0.1, 1) == TrialScheduler.STOP
    assert controller.stopped == ["b"]
    assert {scheduler.choose_trial_to_run(controller).trial_id} <= {"a", "c"}


def test_a_resumed_bracket_past_a_halving_does_not_halve_its_winners_again() -> None:
    # Rungs 1, 2 and 4. Killed after rung 1 stopped b and d: a waited at rung 2, c was short of it.
    rungs = {"max_t": 4, "grace_period": 1, "reduction_factor": 2}
    scheduler = SynchronousHalving(metric="objective", mode="max", sizes=[4], **rungs)
    controller = _Controller(scheduler)
    trials = {
        "a": _Trial("a", Trial.PENDING, _result(0.6, 2)),
        "b": _Trial("b", Trial.TERMINATED, _result(0.2, 1)),
        "c": _Trial("c", Trial.PENDING, _result(0.8, 1)),
        "d": _Trial("d", Trial.TERMINATED, _result(0.1, 1)),
    }
    _restored(scheduler, controller, trials)
    # c, short of rung 2, runs again; a waits there for it.
    assert scheduler.choose_trial_to_run(controller) is trials["c"]
    assert trials["a"].status == Trial.PAUSED
    # Rung 2 keeps one of the two (not two of them, as a bracket halved again at rung 1 would).
    assert _report(scheduler, controller, trials["c"], 0.7, 2) == TrialScheduler.CONTINUE
    assert controller.stopped == ["a"]
    assert scheduler.debug_string().startswith("Synchronous halving: 1 stopped, 1 brackets")
