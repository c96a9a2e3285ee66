"""bench/gpu.py runs in its smoke mode on the CPU with Ray, MLflow, pydantic, albumentations and
the other heavy packages made unimportable: what it needs is what a bare GPU machine has."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

UNAVAILABLE = ("ray", "mlflow", "optuna", "pydantic", "albumentations", "cv2", "pandas", "sklearn", "scipy", "rich")
RUN_WITHOUT_THEM = (
    "import runpy, sys; sys.modules.update(dict.fromkeys({names!r})); "
    "sys.argv = [{bench!r}, '--smoke']; runpy.run_path({bench!r}, run_name='__main__')"
)


def test_gpu_smoke_needs_only_torch_timm_numpy_and_the_lean_harness_modules() -> None:
    bench = str(REPO / "bench" / "gpu.py")
    code = RUN_WITHOUT_THEM.format(names=UNAVAILABLE, bench=bench)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    single = re.search(r"^\| cancernet \| 48x48 \| 128 \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|$", done.stdout, re.M)
    fp32, bf16, ratio = (float(g.replace(",", "")) for g in single.groups())
    assert fp32 > 0 and ratio == pytest.approx(bf16 / fp32, abs=0.01)
    reads = re.search(r"^\| cancernet \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|$", done.stdout, re.M)
    every_step, blocked, gain = (float(g.replace(",", "")) for g in reads.groups())
    assert every_step > 0 and gain == pytest.approx(blocked / every_step, abs=0.01)
    pair = re.search(r"^\| cancernet \| bf16 \| 2 \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| n/a \|$", done.stdout, re.M)
    total, per_trial, versus = (float(g.replace(",", "")) for g in pair.groups())
    assert per_trial == pytest.approx(total / 2, abs=1) and versus == pytest.approx(total / bf16, abs=0.01)
