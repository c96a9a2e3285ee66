"""bench/data.py runs end to end in its smoke mode and prints both of its tables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench" / "data.py"


def test_data_bench_smoke_prints_loading_and_indexing_rates() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loading, indexing = (
        [line.split() for line in table.splitlines()[1:]] for table in done.stdout.strip().split("\n\n")
    )
    # The smoke trees: 4 IDC patients of 20 patches; 9 BreakHis folders x 4 magnifications x 1 image.
    assert [(row[0], row[1]) for row in loading] == [("IDC", "80"), ("BreakHis", "36")]
    assert [(row[0], row[1]) for row in indexing] == [("IDC", "80"), ("BreakHis", "36")]
    for row in indexing:
        decode_only, with_digest, ratio = (float(v.replace(",", "").rstrip("x")) for v in row[2:5])
        assert ratio == pytest.approx(decode_only / with_digest, rel=0.05)
