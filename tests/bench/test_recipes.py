"""bench/recipes.py --smoke runs end to end on the real IDC sample and writes figures that hold together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

MODES = [
    "eval, as trained",
    "eval, recalibrated dropout on",
    "eval, recalibrated dropout off",
    "train, dropout on",
    "train, dropout off",
]


@pytest.fixture(scope="module")
def figures(idc_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("bench") / "recipes.csv"
    done = subprocess.run(
        [sys.executable, "bench/recipes.py", "--smoke", "--diagnose", "--bn-recalibration", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, pd.read_csv(out)


def _figure(frame: pd.DataFrame, baseline: str, mode: str, figure: str) -> float:
    value = frame[(frame.baseline == baseline) & (frame["mode"] == mode) & (frame.figure == figure)].value
    assert len(value) == 1, (baseline, mode, figure)
    return float(value.iloc[0])


def test_the_table_shows_floors_and_every_prediction_mode_of_the_one_epoch(figures: tuple[str, pd.DataFrame]) -> None:
    stdout, frame = figures
    assert "IDC sample (96 patches, 24 patients), validation fold 0; semantics source, bn_recalibration true" in stdout
    for line in ("majority", "colour_forest", *MODES):
        assert line in stdout
    assert set(frame[frame.baseline == "cancernet"]["mode"]) == set(MODES) | {
        "bn features.2",
        "bn features.7",
        "bn features.10",
        "bn features.15",
        "bn features.18",
        "bn features.21",
        "bn classifier.3",
    }
    assert set(frame.epoch) == {0, 1}


def test_the_figures_agree_with_the_harness_and_with_each_other(figures: tuple[str, pd.DataFrame]) -> None:
    _, frame = figures
    # The bench's copy of the reported model evaluates exactly as `fit` did.
    assert _figure(frame, "cancernet", MODES[0], "accuracy") == _figure(
        frame, "cancernet", MODES[0], "harness_accuracy"
    )
    assert _figure(frame, "cancernet", MODES[0], "loss") == pytest.approx(
        _figure(frame, "cancernet", MODES[0], "harness_loss"), rel=1e-5
    )
    assert _figure(frame, "cancernet", "train, dropout on", "agree_train_dropout") == 1.0
    assert _figure(frame, "cancernet", "train, dropout off", "agree_train_no_dropout") == 1.0
    # The majority floor predicts one class for every patch, so it cannot rank them.
    assert _figure(frame, "majority", "floor", "top_share") == 1.0
    assert _figure(frame, "majority", "floor", "auc") == 0.5
    for mode in MODES:
        assert 0.5 <= _figure(frame, "cancernet", mode, "top_share") <= 1.0
    # CancerNet's first BatchNorm comes before any Dropout: dropout cannot change what it sees.
    assert _figure(frame, "cancernet", "bn features.2", "dropout_var_gain") == pytest.approx(1.0, rel=1e-6)
