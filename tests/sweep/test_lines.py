"""The sweep's console lines say what their numbers are: a trial's objective at the epoch the trial
selected, the epochs it can really run, and each epoch of a fold's retrain."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import rich
from rich.console import Console

from harness.config import load_experiment
from harness.experiment import epoch_metrics
from harness.metrics import METRIC_NAMES
from harness.run_spec import epoch_budget
from harness.sweep._keys import DONE_KEY, EPOCH_KEY, STUDY_TRIAL_KEY
from harness.sweep._lines import TrialLines, fold_epoch_line, fold_line
from harness.sweep._retrain import FoldEpoch
from harness.train import EpochReport
from tests.conftest import experiment_dict, write_experiment


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the lines print, through a plain 40-column console (as on a pipe: no colour, narrow)."""
    out = io.StringIO()
    console = Console(file=out, width=40, color_system=None)
    monkeypatch.setattr(rich, "get_console", lambda: console)
    return out


def _report(epoch: int, selected: int, accuracy: dict[int, float], *, done: bool = False) -> dict:
    """Return what a trial reports to Tune after `epoch` (its real metrics, as the trial builds
    them) when its lowest validation loss so far was at epoch `selected`."""

    def val(at: int) -> dict[str, float]:
        return dict.fromkeys(METRIC_NAMES, 0.5) | {"accuracy": accuracy[at], "loss": 1.0 / at}

    report = EpochReport(epoch, 0.3, val(epoch), selected, val(selected), done, {})
    return {**epoch_metrics(report, "val_accuracy"), DONE_KEY: float(done), EPOCH_KEY: epoch}


def _trial(last: dict | None = None, **point: object) -> SimpleNamespace:
    config = {"baseline": "cancernet", STUDY_TRIAL_KEY: 3, **point}
    return SimpleNamespace(trial_id="1494ff2a", config=config, last_result=last, num_failures=0)


def test_the_end_line_names_the_selected_epoch_its_objective_comes_from(printed: io.StringIO) -> None:
    # Epoch 1 scored 0.782 and is the selected epoch; epoch 2 scored more but its validation loss was higher.
    lines = TrialLines("val_accuracy", "halving", lambda baseline, point: 4)
    stopped = _report(2, selected=1, accuracy={1: 0.782, 2: 0.8})
    lines.on_trial_complete(0, [], _trial(stopped))
    finished = _report(4, selected=3, accuracy={3: 0.767, 4: 0.7}, done=True)
    lines.on_trial_complete(0, [], _trial(finished))
    assert printed.getvalue().splitlines() == [
        "end   cancernet  1494ff2a  stopped by halving at epoch 2, val_accuracy 0.782 at the selected epoch 1 "
        "(lowest val loss)",
        "end   cancernet  1494ff2a  finished at epoch 4, val_accuracy 0.767 at the selected epoch 3 (lowest val loss)",
    ]


def test_the_start_line_shows_the_budget_in_place_of_a_capped_epochs_max(printed: io.StringIO) -> None:
    seen = []

    def budget(baseline: str, point: dict) -> int:
        seen.append((baseline, point))
        return 4 if "epochs_max" in point else 1

    lines = TrialLines("val_accuracy", "asha", budget)
    lines.on_trial_start(0, [], _trial(lr=0.00856, epochs_max=40))
    lines.on_trial_start(0, [], _trial())
    assert printed.getvalue().splitlines() == [
        "start cancernet  1494ff2a  lr=0.00856; up to 4 epochs",
        "start cancernet  1494ff2a  up to 1 epoch",
    ]
    assert seen == [("cancernet", {"lr": 0.00856, "epochs_max": 40}), ("cancernet", {})]


def test_the_budget_is_the_sampled_or_recipe_epochs_max_under_the_search_cap(tmp_path: Path) -> None:
    data = experiment_dict(tmp_path, tmp_path / "results", search={"trials": 2, "max_epochs": 4})
    config = load_experiment(write_experiment(tmp_path / "x.yaml", data))
    assert epoch_budget(config, "cancernet", {"epochs_max": 40}) == 4
    assert epoch_budget(config, "cancernet", {"epochs_max": 3}) == 3
    # CancerNet's recipe trains 40 epochs: the cap holds it to 4.
    assert epoch_budget(config, "cancernet") == 4


def test_a_fold_retrain_prints_each_epoch_then_its_end(printed: io.StringIO) -> None:
    fold_epoch_line(FoldEpoch("resnet18", 2, 3, 6, 0.4123, "val_accuracy", 0.8131))
    fold_line("resnet18", 2, 0.6)
    assert printed.getvalue().splitlines() == [
        "epoch resnet18   fold 2 epoch 3 of at most 6: val loss 0.412, val_accuracy 0.813",
        "fold  resnet18   fold 2 retrained, test accuracy 0.600 at its selected epoch (lowest val loss)",
    ]
