"""A regular install (a wheel, not `pip install -e`) carries everything the CLI reads at run time:
built here, installed into a fresh virtual environment, and run from another directory."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, experiment_dict, write_experiment

pytestmark = pytest.mark.e2e
SOURCES = ("pyproject.toml", "README.md", "harness", "baselines")
# Prints where the package was imported from, and the search spaces and published tables it carries.
PACKAGE_DATA = (
    "import harness, harness.config as c, harness.leaderboard.reference as r; "
    "print(harness.__file__, len(list(c.SEARCH_SPACES_DIR.glob('*.yaml'))), len(list(r.REFERENCE_DIR.glob('*.csv'))))"
)


def _run(*command: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: a checkout named there would shadow the installed package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "200"}
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the bin folder of a fresh venv holding the project's wheel and nothing else of it.

    The dependencies come from this interpreter's site-packages through a path file: installing
    torch and Ray again would take gigabytes, and they are not what is tested here."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    built = _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source, cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("histo_harness-*.whl")
    venv = tmp / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp).returncode == 0
    done = _run(*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    assert done.returncode == 0, done.stderr
    # The dependencies only: a path file adds the folder, and its own path files (this checkout's
    # editable finder among them) are not read.
    (dependencies,) = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    (next((venv / "lib").glob("python3*/site-packages")) / "dependencies.pth").write_text(dependencies + "\n")
    return venv / "bin"


def test_the_installed_package_is_the_wheel_and_carries_its_data(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "python", "-c", PACKAGE_DATA, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    package, spaces, tables = where.stdout.split()
    assert package.startswith(str(installed.parent)), package
    assert int(spaces) == len(list((REPO / "harness" / "search_spaces").glob("*.yaml"))) > 10
    assert int(tables) == len(list((REPO / "harness" / "leaderboard" / "published").glob("*.csv"))) > 10
    models = _run(installed / "harness", "models", cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert "cancernet" in models.stdout and "gusa_fa_gusa" in models.stdout


def test_the_installed_harness_runs_a_one_trial_sweep_from_another_directory(
    installed: Path, tmp_path: Path, synthetic_idc: Path
) -> None:
    sections = {
        "search": {"trials": 1, "max_epochs": 1, "grace_period": 1, "retrain": "none"},
        "floors": [],
    }
    experiment = write_experiment(tmp_path / "one.yaml", experiment_dict(synthetic_idc, tmp_path / "out", **sections))
    result = _run(installed / "harness", "sweep", experiment, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cancernet" in result.stdout and (tmp_path / "out" / "mlflow.db").is_file()
