"""bench/sweep_overhead.py runs end to end in its smoke mode: it reads back only the sweep's trial
runs (not its floors') and prints the wall times and their ratio, which are its figures (read at
full precision from --figures, not re-parsed from what it prints)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun


def test_sweep_overhead_smoke_times_both_sides_on_the_trials_and_prints_the_ratio(
    run_bench: Callable[..., BenchRun],
) -> None:
    run = run_bench("sweep_overhead.py", "--smoke", timeout=600)
    figures = run.figures
    # Both sides train the same 2 trials (the bench runs the sweep without floors), in one round.
    assert (figures["trials"], figures["epochs"]) == (2, 1)
    [round_] = figures["rounds"]
    assert round_["trials"] == 2
    assert 0 < round_["harness_s"] < math.inf and 0 < round_["bare_s"] < math.inf
    assert (
        f"round 1: harness sweep {round_['harness_s']:.1f} s, bare Tuner {round_['bare_s']:.1f} s "
        "(2 trials x 1 epochs each)"
    ) in run.lines
    # The median of one round is that round.
    median = figures["median"]
    assert (median["harness_s"], median["bare_s"]) == (round_["harness_s"], round_["bare_s"])
    assert median["ratio"] == pytest.approx(median["harness_s"] / median["bare_s"], rel=1e-9)
    assert run.line("median wall time: ") == (
        f"median wall time: harness {median['harness_s']:.3f} s, bare Tune {median['bare_s']:.3f} s; "
        f"ratio harness/bare {median['ratio']:.2f} (target <= 1.1)"
    )
