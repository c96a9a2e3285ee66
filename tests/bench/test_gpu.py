"""bench/gpu.py runs in its smoke mode on the CPU with Ray, MLflow, pydantic, albumentations and
the other heavy packages made unimportable: what it needs is what a bare GPU machine has. Its
figures are checked against each other and against its tables, never against a speed."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun

UNAVAILABLE = ("ray", "mlflow", "optuna", "pydantic", "albumentations", "cv2", "pandas", "sklearn", "scipy", "rich")
# `python -c RUN_WITHOUT_THEM bench args...` sees sys.argv == ["-c", bench, *args].
RUN_WITHOUT_THEM = (
    f"import runpy, sys; sys.modules.update(dict.fromkeys({UNAVAILABLE!r})); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _window(measured: dict[str, float]) -> float:
    """Check one timed window's figures; returns its images/s."""
    assert measured["images"] > 0 and 0 < measured["seconds"] < math.inf
    assert measured["rate"] == pytest.approx(measured["images"] / measured["seconds"], rel=1e-9)
    return measured["rate"]


def test_gpu_smoke_needs_only_torch_timm_numpy_and_the_lean_harness_modules(
    run_bench: Callable[..., BenchRun],
) -> None:
    run = run_bench("gpu.py", "--smoke", python=(sys.executable, "-c", RUN_WITHOUT_THEM), cwd="/")
    figures = run.figures
    assert run.lines[0].startswith(f"device: {figures['device']}; torch ")
    assert run.lines[0].endswith(f"; {figures['seconds']:g} s per measurement")
    # The smoke mode's one case, CancerNet, at fp32 and bf16.
    assert list(figures["single"]) == ["cancernet"]
    single = figures["single"]["cancernet"]
    fp32, bf16 = _window(single["fp32"]), _window(single["bf16"])
    assert single["bf16_over_fp32"] == pytest.approx(bf16 / fp32, rel=1e-9)
    ratio = single["bf16_over_fp32"]
    row = f"| cancernet | {single['input']} | {single['batch']} | {fp32:,.0f} | {bf16:,.0f} | {ratio:.2f} |"
    assert single["input"] == "48x48" and row in run.lines

    # Reading the loss every step against every `read_every` steps.
    assert f"| baseline | loss read every step, img/s | every {figures['read_every']} steps | ratio |" in run.lines
    reads = figures["loss_reads"]["cancernet"]
    every_step, blocked = _window(reads["every_step"]), _window(reads["blocked"])
    assert reads["ratio"] == pytest.approx(blocked / every_step, rel=1e-9)
    assert f"| cancernet | {every_step:,.0f} | {blocked:,.0f} | {reads['ratio']:.2f} |" in run.lines

    # Two packed trial processes: their total is the sum of their rates, set against one trial alone.
    assert list(figures["packed"]["cancernet"]) == ["2"]
    pair = figures["packed"]["cancernet"]["2"]
    rates = [_window(trial) for trial in pair["trials"]]
    assert len(rates) == 2
    assert pair["total"] == pytest.approx(sum(rates), rel=1e-9)
    assert pair["per_trial"] == pytest.approx(pair["total"] / 2, rel=1e-9)
    assert pair["vs_one_alone"] == pytest.approx(pair["total"] / bf16, rel=1e-9)
    row = (
        f"| cancernet | bf16 | 2 | {pair['total']:,.0f} | {pair['per_trial']:,.0f} | {pair['vs_one_alone']:.2f} "
        f"| {pair['gpu_util']} |"
    )
    assert pair["precision"] == "bf16" and row in run.lines
