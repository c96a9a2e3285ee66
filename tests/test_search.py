"""The search wiring: pruned trials reach Optuna as PRUNED, budgets and rungs are per baseline."""

from __future__ import annotations

import ast
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from harness.config import load_search_space
from harness.search import DONE_KEY, PerBaselineASHA, PerBaselineSearcher, PruningAwareOptunaSearch, optuna_distribution, start_points

from .conftest import REPO


def _searcher() -> PruningAwareOptunaSearch:
    space = {k: optuna_distribution(d) for k, d in load_search_space("cancernet").search.items()}
    return PruningAwareOptunaSearch(space=space, metric="objective", mode="max")


@pytest.mark.parametrize(
    ("last", "error", "state"),
    [
        ({"objective": 0.7, "training_iteration": 1, DONE_KEY: 0.0}, False, TrialState.PRUNED),
        ({"objective": 0.7, "training_iteration": 1, DONE_KEY: 1.0}, False, TrialState.COMPLETE),
        (None, True, TrialState.FAIL),
    ],
    ids=["stopped-by-asha", "finished", "errored"],
)
def test_trial_end_reaches_optuna_with_the_right_state(last: dict | None, error: bool, state: TrialState) -> None:
    searcher = _searcher()
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"objective": 0.7, "training_iteration": 1, DONE_KEY: 0.0})
    searcher.on_trial_complete("t1", last, error=error)
    trial = searcher._ot_study.trials[0]
    assert trial.state == state
    assert trial.intermediate_values == {1: 0.7}


def test_per_baseline_searcher_hands_out_each_budget_round_robin() -> None:
    spaces = {name: load_search_space(name).pinned({"freeze": "none"} if name == "resnet18" else {})
              for name in ("cancernet", "resnet18")}
    starts = {name: start_points(space, []) for name, space in spaces.items()}
    searcher = PerBaselineSearcher(spaces, metric="objective", mode="max", trials=2, sampler="tpe", seed=0, starts=starts)
    configs = [searcher.suggest(f"t{i}") for i in range(5)]
    assert [c["baseline"] for c in configs[:4]] == ["cancernet", "resnet18", "cancernet", "resnet18"]
    assert configs[4] == Searcher.FINISHED
    # The published recipe is the first point of a space that contains it.
    assert {k: configs[0][k] for k in ("lr", "batch_size", "epochs_max")} == {"lr": 0.01, "batch_size": 32, "epochs_max": 40}
    assert set(configs[1]) == {"baseline", *spaces["resnet18"].search}


def test_asha_rungs_compare_trials_of_one_baseline_only() -> None:
    scheduler = PerBaselineASHA(max_t=4, grace_period=1, reduction_factor=2)
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
