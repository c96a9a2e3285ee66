"""Running a bench the way its smoke test does: its stdout and the figures it wrote with --figures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


@dataclass(frozen=True)
class BenchRun:
    """What one bench run printed, and every figure it computed at full precision."""

    stdout: str
    figures: dict[str, Any]

    @property
    def lines(self) -> list[str]:
        """Return the printed lines."""
        return self.stdout.splitlines()

    def line(self, start: str) -> str:
        """Return the one printed line that starts with `start`."""
        found = [line for line in self.lines if line.startswith(start)]
        assert len(found) == 1, f"{len(found)} lines start with {start!r}:\n{self.stdout}"
        return found[0]


@pytest.fixture
def run_bench(tmp_path: Path) -> Callable[..., BenchRun]:
    """Return a function that runs bench/`script` with `args` and `--figures` to its end (by
    `python`, in `cwd`) and returns what it printed and the figures it wrote."""

    def run(
        script: str, *args: str, python: Sequence[str] = (sys.executable,), cwd: Path | str = REPO, timeout: int = 300
    ) -> BenchRun:
        figures = tmp_path / f"{Path(script).stem}-figures.json"
        command = [*python, str(REPO / "bench" / script), *args, "--figures", str(figures)]
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return BenchRun(done.stdout, json.loads(figures.read_text()))

    return run
