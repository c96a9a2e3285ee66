"""Faults in the data a hostile but realistic user meets: a manifest from another copy of the data
or whose files changed since, symlinked folders, names that only look like the layout, and a
network call at import. Each runs the real command (or set-up) on real files and checks the exit
code, the one line printed and, where pixels are involved, which pixels were cached."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app
from harness.data.datasets.idc import LAYOUT, write_synthetic_idc


def _index(*args: str) -> tuple[int, str]:
    """Run `harness data index ARGS --allow-subset` in this process; returns its exit code and stderr."""
    result = CliRunner().invoke(app, ["data", "index", *args, "--allow-subset"])
    return result.exit_code, result.stderr


def test_digits_of_another_script_do_not_pass_for_an_idc_name(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=2)
    # int() reads U+0665 U+0661 as 51: the name looked like a patch at x = 51.
    lookalike = root / "90000" / "0" / "90000_idx5_x\u0665\u0661_y1_class0.png"
    shutil.copy(root / "90000" / "0" / "90000_idx5_x1_y1_class0.png", lookalike)
    code, stderr = _index("--root", str(root), "--out", str(tmp_path / "m.parquet"))
    assert code == 2
    assert stderr.strip().splitlines() == [f"error: {lookalike}: name does not match {LAYOUT}"]
