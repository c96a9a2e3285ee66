"""The search wiring: pruned trials reach Optuna as PRUNED with their last epoch, budgets and rungs are per
baseline, and synchronous halving decides the same whatever order results arrive in."""

from __future__ import annotations

import ast
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from harness.config import load_search_space
from harness.sweep._search import (
    DONE_KEY,
    EPOCH_KEY,
    RUN_ID_KEY,
    STUDY_TRIAL_KEY,
    MlflowLinks,
    PerBaselineScheduler,
    PerBaselineSearcher,
    PruningAwareOptunaSearch,
    StartStudyTrials,
    batch_brackets,
    batched,
    build_sampler,
    optuna_distribution,
    optuna_storage,
    start_points,
    study_name,
)
from tests.conftest import REPO


def _searcher() -> PruningAwareOptunaSearch:
    space = {k: optuna_distribution(d) for k, d in load_search_space("cancernet").search.items()}
    return PruningAwareOptunaSearch(space=space, metric="objective", mode="max", metric_name="sel_val_accuracy")


def _result(value: float, epoch: int, done: bool = False) -> dict:
    return {"objective": value, "training_iteration": epoch, EPOCH_KEY: epoch, DONE_KEY: float(done)}


@pytest.mark.parametrize(
    ("last", "error", "state", "value", "steps"),
    [
        # Ray hands the result ASHA answered STOP to only to on_trial_complete.
        (_result(0.6, 2), False, TrialState.PRUNED, 0.6, {1: 0.7, 2: 0.6}),
        # A paused trial that synchronous halving stops comes with no result at all.
        (None, False, TrialState.PRUNED, 0.7, {1: 0.7}),
        (_result(0.8, 2, done=True), False, TrialState.COMPLETE, 0.8, {1: 0.7, 2: 0.8}),
        # A finished function trial's last result arrives twice; it is reported once.
        (_result(0.7, 1, done=True), False, TrialState.COMPLETE, 0.7, {1: 0.7}),
        (None, True, TrialState.FAIL, None, {1: 0.7}),
    ],
    ids=["stopped-by-asha", "stopped-while-paused", "finished", "finished-result-again", "errored"],
)
def test_trial_end_reaches_optuna_with_its_last_epoch(
    last: dict | None, error: bool, state: TrialState, value: float | None, steps: dict[int, float]
) -> None:
    searcher = _searcher()
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _result(0.7, 1))
    searcher.on_trial_complete("t1", last, error=error)
    (trial,) = searcher._ot_study.trials
    assert (trial.state, trial.value, trial.intermediate_values) == (state, value, steps)
    assert trial.user_attrs == {"ray_trial_id": "t1"}
    assert searcher._ot_study.metric_names == ["sel_val_accuracy"]


def _linked_searcher(calls: list) -> PruningAwareOptunaSearch:
    """Return a searcher whose link records its calls in `calls` and finds run-<trial id>."""
    space = {k: optuna_distribution(d) for k, d in load_search_space("cancernet").search.items()}
    return PruningAwareOptunaSearch(
        space=space,
        metric="objective",
        mode="max",
        metric_name="objective",
        link=lambda tid: calls.append(tid) or f"run-{tid}",
    )


def test_each_suggestion_carries_its_study_number_and_each_result_its_run() -> None:
    calls = []
    searcher = _linked_searcher(calls)
    assert [searcher.suggest(t)[STUDY_TRIAL_KEY] for t in ("t1", "t2")] == [0, 1]
    searcher.on_trial_result("t2", _result(0.6, 1) | {RUN_ID_KEY: "run-b"})
    searcher.on_trial_complete("t2", _result(0.5, 2) | {RUN_ID_KEY: "run-b"})
    trial = next(t for t in searcher._ot_study.trials if t.number == 1)
    # The results named the run: the tracking store is never asked.
    assert calls == []
    assert trial.user_attrs == {"ray_trial_id": "t2", "mlflow_run_id": "run-b"}
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, 0.5, {1: 0.6, 2: 0.5})


def test_a_trial_failing_before_its_first_result_is_still_linked_to_its_run() -> None:
    # Its run exists (the trial opens it before training) and would otherwise keep Ray's id as its name.
    calls = []
    searcher = _linked_searcher(calls)
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", None, error=True)
    assert calls == ["t2"]
    failed = next(t for t in searcher._ot_study.trials if t.number == 1)
    assert failed.state == TrialState.FAIL and failed.user_attrs["mlflow_run_id"] == "run-t2"


def test_a_linked_trial_and_its_study_lead_to_mlflow_pages() -> None:
    space = {k: optuna_distribution(d) for k, d in load_search_space("cancernet").search.items()}
    links = MlflowLinks("http://mlflow.lab:5000", "demo", "7", "sweep-run")
    searcher = PruningAwareOptunaSearch(space=space, metric="objective", mode="max", metric_name="o", links=links)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", _result(0.5, 1) | {RUN_ID_KEY: "run-a"})
    assert searcher._ot_study.user_attrs == {
        "mlflow_tracking_uri": "http://mlflow.lab:5000",
        "mlflow_experiment": "demo",
        "mlflow_experiment_id": "7",
        "mlflow_sweep_run_id": "sweep-run",
        "mlflow_sweep_run_url": "http://mlflow.lab:5000/#/experiments/7/runs/sweep-run",
    }
    (trial,) = searcher._ot_study.trials
    assert trial.user_attrs["mlflow_run_url"] == "http://mlflow.lab:5000/#/experiments/7/runs/run-a"
    # A store without a server: the address `mlflow ui` serves it at, and the study says so.
    local = MlflowLinks("sqlite:////r/mlflow.db", "demo", "7", "sweep-run").study_attrs()
    assert local["mlflow_sweep_run_url"] == "http://127.0.0.1:5000/#/experiments/7/runs/sweep-run"
    assert local["mlflow_ui"].endswith("mlflow ui --backend-store-uri sqlite:////r/mlflow.db")


@pytest.mark.parametrize("storage", ["sqlite:///{}/optuna.db", "journal://{}/optuna.log"])
def test_suggestions_of_a_batch_wait_until_started_and_each_end_is_told_as_it_comes(
    tmp_path: Path, storage: str
) -> None:
    """Optuna records a trial's start when Tune starts it (not when its batch was suggested) and its
    end when it ends (not when the last trial of its batch ends), in an RDB and a journal alike."""
    url, prefix = storage.format(tmp_path), "exp/sweep-20260101-000000"
    space = load_search_space("cancernet")
    searcher = PerBaselineSearcher(
        {"cancernet": space}, metric="objective", mode="max", trials=3, sampler="random", seed=0,
        starts={"cancernet": start_points(space, [])}, storage=url, study_prefix=prefix,
    )  # fmt: skip
    limited = batched(searcher, 3)
    configs = [limited.suggest(t) for t in ("t1", "t2", "t3")]
    study = optuna.load_study(study_name=study_name(prefix, "cancernet"), storage=optuna_storage(url))
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 3
    started = datetime.now()
    StartStudyTrials(url, prefix).on_trial_start(0, [], SimpleNamespace(config=configs[0]))
    limited.on_trial_result("t1", _result(0.7, 1))
    limited.on_trial_complete("t1", _result(0.8, 2, done=True))
    first, second, third = study.get_trials()
    assert first.state == TrialState.COMPLETE and first.datetime_start >= started
    assert first.datetime_complete >= first.datetime_start
    assert (second.state, third.state) == (TrialState.WAITING, TrialState.WAITING)
    assert limited.suggest("t4") is None  # the next batch still waits for the whole of this one
    # A trial Tune ends before it ever started (stopped while pending) is told all the same.
    limited.on_trial_complete("t2")
    assert study.get_trials()[1].state == TrialState.PRUNED


def test_waiting_suggestions_are_neither_drawn_again_nor_taken_for_enqueued_points() -> None:
    space = {"batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32, 64])}
    searcher = PruningAwareOptunaSearch(
        space,
        metric="objective",
        mode="max",
        metric_name="o",
        sampler=build_sampler("bruteforce", 0),
        points_to_evaluate=[{"batch_size": 32}, {"batch_size": 8}],
    )
    points = [searcher.suggest(f"t{i}")["batch_size"] for i in range(4)]
    assert points[:2] == [32, 8] and sorted(points) == [8, 16, 32, 64]


def test_per_baseline_searcher_hands_out_each_budget_round_robin() -> None:
    spaces = {
        name: load_search_space(name).pinned({"freeze": "none"} if name == "resnet18" else {})
        for name in ("cancernet", "resnet18")
    }
    starts = {name: start_points(space, []) for name, space in spaces.items()}
    searcher = PerBaselineSearcher(
        spaces, metric="objective", mode="max", trials=2, sampler="tpe", seed=0, starts=starts
    )
    configs = [searcher.suggest(f"t{i}") for i in range(5)]
    assert [c["baseline"] for c in configs[:4]] == ["cancernet", "resnet18", "cancernet", "resnet18"]
    assert configs[4] == Searcher.FINISHED
    # The published recipe is the first point of a space that contains it.
    assert {k: configs[0][k] for k in ("lr", "batch_size", "epochs_max")} == {
        "lr": 0.01,
        "batch_size": 32,
        "epochs_max": 40,
    }
    assert set(configs[1]) == {"baseline", STUDY_TRIAL_KEY, *spaces["resnet18"].search}
    assert [c[STUDY_TRIAL_KEY] for c in configs[:4]] == [0, 0, 1, 1]


def test_asha_rungs_compare_trials_of_one_baseline_only() -> None:
    scheduler = PerBaselineScheduler(max_t=4, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties("objective", "max")
    trial = lambda tid, name: SimpleNamespace(trial_id=tid, config={"baseline": name})  # noqa: E731
    a1, a2, b1 = trial("a1", "cancernet"), trial("a2", "cancernet"), trial("b1", "resnet18")
    for t in (a1, a2, b1):
        scheduler.on_trial_add(None, t)
    result = lambda v: {"objective": v, "training_iteration": 1}  # noqa: E731
    assert scheduler.on_trial_result(None, a1, result(0.9)) == TrialScheduler.CONTINUE
    # A weak resnet18 trial is not stopped by a strong cancernet one...
    assert scheduler.on_trial_result(None, b1, result(0.1)) == TrialScheduler.CONTINUE
    # ...but a weak cancernet trial is.
    assert scheduler.on_trial_result(None, a2, result(0.1)) == TrialScheduler.STOP


def test_harness_never_imports_ray_train_or_ray_air() -> None:
    # Inside a Tune trial ray.train.report raises on Ray >= 2.5x (NOTES-ray-optuna-mlflow.md).
    offenders = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("ray.train", "ray.air"))]
    assert offenders == []


class _Trial:
    """The parts of a Tune trial a scheduler reads: `number` is its Optuna trial's."""

    def __init__(self, trial_id: str, number: int) -> None:
        self.trial_id, self.status, self.is_saving = trial_id, Trial.RUNNING, False
        self.config = {"baseline": "cancernet", STUDY_TRIAL_KEY: number}
        self.run_metadata = SimpleNamespace(last_result={})


class _Controller:
    """Does to a trial what Tune's controller does when a scheduler stops a paused one."""

    def __init__(self, scheduler: PerBaselineScheduler) -> None:
        self.scheduler = scheduler

    def stop_trial(self, trial: _Trial) -> None:
        self.scheduler.on_trial_remove(self, trial)
        trial.status = Trial.TERMINATED


@pytest.mark.parametrize("order", ["abcd", "dcba", "cadb"])
def test_synchronous_halving_decides_the_same_in_any_arrival_order(order: str) -> None:
    scheduler = PerBaselineScheduler(max_t=2, grace_period=1, reduction_factor=2, brackets={"cancernet": [4]})
    scheduler.set_search_properties("objective", "max")
    controller = _Controller(scheduler)
    trials = {name: _Trial(name, number) for number, name in enumerate("abcd")}
    for trial in trials.values():
        scheduler.on_trial_add(controller, trial)
    values = {"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.4}
    actions = {}
    for name in order:
        actions[name] = scheduler.on_trial_result(controller, trials[name], {"objective": values[name], EPOCH_KEY: 1})
        if actions[name] == TrialScheduler.PAUSE:
            trials[name].status = Trial.PAUSED
    # Every trial but the last to arrive waits; then the best half goes on, the rest stop.
    assert [actions[name] for name in order[:-1]] == [TrialScheduler.PAUSE] * 3
    stopped = {n for n, t in trials.items() if t.status == Trial.TERMINATED or actions[n] == TrialScheduler.STOP}
    assert stopped == {"b", "d"}
    assert {t.trial_id for t in scheduler._groups["cancernet"]._hyperbands[0][0].trials_to_unpause} == {"a", "c"} - {
        order[-1]
    }


def test_batches_give_each_baseline_a_bracket_per_batch() -> None:
    assert batch_brackets(["cancernet", "resnet18"], 3, 4) == {"cancernet": [2, 1], "resnet18": [2, 1]}
    assert batch_brackets(["cancernet"], 4, 4) == {"cancernet": [4]}
