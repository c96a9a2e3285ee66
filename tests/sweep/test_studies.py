"""The Optuna studies a sweep keeps: warm starts from an earlier sweep, and their plots."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from PIL import Image

from harness.config import load_search_space
from harness.errors import InputError
from harness.sweep._search import optuna_distribution, optuna_storage, study_name
from harness.sweep._studies import plot_study, warm_start_points


def _earlier_sweep(storage: str, prefix: str, values: dict[float, float]) -> None:
    """A CancerNet study whose completed trials have lr -> objective as given (other params the recipe's)."""
    space = load_search_space("cancernet")
    study = optuna.create_study(
        study_name=study_name(prefix, "cancernet"), storage=optuna_storage(storage), direction="maximize"
    )
    distributions = {k: optuna_distribution(d) for k, d in space.search.items()}
    for lr, value in values.items():
        params = {**{k: space.recipe[k] for k in space.search}, "lr": lr}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))


@pytest.mark.parametrize("form", ["sqlite:///{}/optuna.db", "journal://{}/optuna.log"])
def test_warm_start_takes_the_best_points_inside_the_space_from_the_latest_sweep(tmp_path: Path, form: str) -> None:
    storage = form.format(tmp_path)
    _earlier_sweep(storage, "exp/sweep-20260101-000000", {0.002: 0.9})
    _earlier_sweep(storage, "exp/sweep-20260102-000000", {0.002: 0.7, 0.004: 0.8, 0.006: 0.6, 0.03: 0.65})
    space = load_search_space("cancernet").pinned({"lr": 0.004})
    spaces = {"cancernet": load_search_space("cancernet")}
    points, notes = warm_start_points(storage, "exp", "exp/sweep-20260103-000000", "latest", spaces, top=2, mode="max")
    assert [p["lr"] for p in points["cancernet"]] == [0.004, 0.002]
    assert notes == ["cancernet: warm start from 2 best point(s) of exp/sweep-20260102-000000"]
    # A point outside this sweep's space (lr pinned) is never proposed.
    pinned, _ = warm_start_points(storage, "exp", "exp/now", "latest", {"cancernet": space}, top=3, mode="max")
    assert pinned == {"cancernet": []}
    named, _ = warm_start_points(storage, "exp", "exp/now", "sweep-20260101-000000", spaces, top=3, mode="max")
    assert [p["lr"] for p in named["cancernet"]] == [0.002]
    with pytest.raises(InputError, match="no earlier sweep of 'other'"):
        warm_start_points(storage, "other", "other/now", "latest", spaces, top=3, mode="max")


def test_study_plots_are_images_and_too_few_trials_are_said(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _earlier_sweep(storage, "exp/a", {0.002: 0.7, 0.004: 0.8, 0.006: 0.6, 0.03: 0.65})
    files, skipped = plot_study(storage, study_name("exp/a", "cancernet"), tmp_path)
    assert [f.name for f in files] == ["cancernet_history.png", "cancernet_importance.png"] and skipped == []
    assert all(Image.open(f).size[0] > 300 for f in files)
    _earlier_sweep(storage, "exp/b", {0.002: 0.7})
    files, skipped = plot_study(storage, study_name("exp/b", "cancernet"), tmp_path)
    assert [f.name for f in files] == ["cancernet_history.png"]
    assert skipped == ["cancernet: importance plot needs 2 completed trials, has 1 (the 0 stopped early do not count)"]
    # optuna-dashboard leaves its importance pane empty; the study's attributes, on its front page, say why.
    study = optuna.load_study(study_name=study_name("exp/b", "cancernet"), storage=optuna_storage(storage))
    assert study.user_attrs == {"param_importance": f"not computed: {skipped[0].split(' plot ')[1]}"}
