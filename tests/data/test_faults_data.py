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
from harness.data.manifest import read_manifest


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


def test_a_symlinked_patient_folder_is_indexed_and_a_link_loop_ends(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=3)
    # A tree assembled from links: one patient lives elsewhere; a link inside the tree points back up.
    shutil.move(root / "90002", tmp_path / "90002")
    (root / "90002").symlink_to(tmp_path / "90002")
    (root / "90000" / "up").symlink_to(root)
    out = tmp_path / "m.parquet"
    code, stderr = _index("--root", str(root), "--out", str(out))
    assert code == 0, stderr
    manifest = read_manifest(out)[0]
    assert sorted(manifest.patient_id.unique()) == ["90000", "90001", "90002"]
    assert len(manifest) == 3 * 20 and manifest.rel_path.is_unique
    assert (root / "90002" / "1" / "90002_idx5_x1_y5101_class1.png").as_posix() in set(manifest.path)
