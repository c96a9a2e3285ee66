"""docs/cluster.md's sizing section is tools/sizing.py's rendering of the saved bench figures, and
its arithmetic holds on known inputs."""

from __future__ import annotations

import json

import pytest

from tools.sizing import BEGIN, DOC, END, FIGURES, asha_epochs, ask_growth, overhead, render


def test_the_sizing_section_is_rendered_from_the_saved_figures() -> None:
    text = DOC.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    scale = json.loads((FIGURES / "sweep-scale.json").read_text())
    gpu = json.loads((FIGURES / "gpu-nvidia-h200.json").read_text())
    study = json.loads((FIGURES / "optuna-scale.json").read_text())
    assert block == render(scale, gpu, study)
    # The figures themselves, not only their rendering: the largest size's driver CPU per trial.
    largest = scale["sizes"][max(scale["sizes"], key=int)]
    assert f"{largest['search_cpu_s_per_trial']:.4f} CPU s per trial over the search" in block
    # And one row of the searcher-alone table: the journal's largest study's late ask.
    journal = study["study_only"]["journal"]
    row = journal[max(journal, key=int)]
    assert f"| {row['ask']['last']['p50_ms']:.1f}/{row['ask']['last']['p99_ms']:.1f} |" in block


def test_asha_trains_each_rung_on_the_share_that_reaches_it() -> None:
    # Rungs 10, 30, 90, 100 reached by 1, 1/3, 1/9 and 1/27 of the trials.
    assert asha_epochs(10, 3, 100) == pytest.approx(10 + 20 / 3 + 60 / 9 + 10 / 27)
    assert asha_epochs(1, 3, 3) == pytest.approx(1 + 2 / 3)
    assert asha_epochs(5, 2, 5) == 5


def test_the_ask_limit_is_extrapolated_from_its_growth_and_overhead_from_both_sides() -> None:
    row = {"latency": {"ask": {"first": {"p99_ms": 10.0}, "last": {"p99_ms": 19.0}}}}
    # 9 ms over 900 trials: 1 ms per 100 trials from 950 on, so 100 ms is 81 ms (8,100 trials) later.
    assert ask_growth(row, 1000) == (10.0, 19.0, pytest.approx(950 + 8100))
    row["latency"]["ask"]["last"]["p99_ms"] = 9.0
    assert ask_growth(row, 1000)[2] is None
    sizes = {"100": {"harness_s": 60.0, "bare_s": 50.0, "ratio": 1.2}, "1000": {"harness_s": 500.0}}
    assert overhead({"concurrency": 2, "sizes": sizes}) == (100, pytest.approx(0.2))
    assert overhead({"concurrency": 2, "sizes": {"1000": {"harness_s": 500.0}}}) is None
