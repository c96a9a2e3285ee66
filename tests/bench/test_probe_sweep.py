"""bench/probe_sweep.py runs end to end in its smoke mode (a synthetic IDC tree, a toy encoder in
Phikon's published key names, a 4-trial head sweep through the harness): its printed lines show the
figures it saved, and its rates follow from its measured times."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun

pytestmark = pytest.mark.e2e  # a whole sweep in its own Ray: make test-cluster runs it


def test_probe_sweep_smoke_embeds_once_fits_a_head_and_sweeps(run_bench: Callable[..., BenchRun]) -> None:
    run = run_bench("probe_sweep.py", "--smoke", timeout=900)
    figures = run.figures
    extraction, one, sweep = figures["extraction"], figures["one_fit"], figures["sweep"]
    assert extraction["per_s"] == pytest.approx(extraction["rows"] / extraction["seconds"], rel=1e-12)
    assert one["pixels_s"] == pytest.approx(one["epochs"] * one["rows"] / extraction["per_s"], rel=1e-12)
    assert one["ratio"] == pytest.approx(one["pixels_s"] / one["seconds"], rel=1e-12)
    assert sweep["trials"] == 4 and sweep["per_min"] == pytest.approx(240 / sweep["span_s"], rel=1e-12)
    assert run.line("extraction: ") == (
        f"extraction: {extraction['rows']} images in {extraction['seconds']:.1f} s on cpu "
        f"({extraction['per_s']:,.1f} embeddings/s)"
    )
    assert run.line("head sweep: ").startswith(f"head sweep: 4 trials in {sweep['wall_s']:.1f} s")
