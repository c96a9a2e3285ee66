"""bench/_figures.py: what a bench records is what its JSON file holds, to the last bit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


def _figures_module() -> ModuleType:
    """Return bench/_figures.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("_figures", REPO / "bench" / "_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_figures_are_written_at_full_precision_and_returned_unchanged(tmp_path: Path) -> None:
    figures = _figures_module().Figures(tmp_path / "out" / "figures.json")
    rate = 1 / 3 * 1e4
    assert figures.record("single", "cancernet", "rate", value=rate) is rate
    figures.record("single", "cancernet", "rounds", value=[0.1, 0.2])
    figures.record("device", value="CPU")
    assert figures.write() == tmp_path / "out" / "figures.json"
    written = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert written == {"single": {"cancernet": {"rate": rate, "rounds": [0.1, 0.2]}}, "device": "CPU"}
    assert written["single"]["cancernet"]["rate"] == rate  # not rounded


def test_a_figure_is_recorded_once_and_named_by_strings() -> None:
    figures = _figures_module().Figures()
    figures.record("ratio", value=1.0)
    with pytest.raises(ValueError, match="already recorded"):
        figures.record("ratio", value=2.0)
    with pytest.raises(ValueError, match="is a figure"):
        figures.record("ratio", "part", value=2.0)
    with pytest.raises(TypeError):
        figures.record("packed", 2, value=1.0)
    assert figures.write() is None  # no --figures: nothing written


def test_the_helper_imports_only_the_standard_library() -> None:
    # bench/gpu.py imports it on a bare GPU machine.
    code = (
        "import sys, runpy; before = set(sys.modules); runpy.run_path(sys.argv[1]); "
        "print(' '.join(sorted(m.split('.')[0] for m in set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(REPO / "bench" / "_figures.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    imported = set(done.stdout.split())
    assert "json" in imported and imported <= set(sys.stdlib_module_names)
