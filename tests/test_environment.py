"""Environment variables: set for a scope and put back after it, never by importing a harness module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import mlflow.environment_variables
import pytest
import ray.air.constants
import typer
from typer.testing import CliRunner

from harness.cli import _quiet_libraries
from harness.environment import MLFLOW_QUIET, QUIET_EMBEDDED_RAY, QUIET_LIBRARIES, environment
from tests.conftest import REPO

A, B = "HARNESS_TEST_A", "HARNESS_TEST_B"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (A, B):
        monkeypatch.delenv(name, raising=False)


def test_a_scope_sets_what_is_unset_and_removes_it_after() -> None:
    with environment({A: "1"}):
        assert os.environ[A] == "1"
    assert A not in os.environ


def test_a_value_the_user_set_is_kept_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(A, "user")
    with environment({A: "1"}):
        assert os.environ[A] == "user"
    with environment({A: "1"}, override=True):
        assert os.environ[A] == "1"
    assert os.environ[A] == "user"


def test_the_environment_comes_back_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(B, "before")
    with pytest.raises(RuntimeError), environment({A: "1", B: "2"}, override=True):
        raise RuntimeError
    assert A not in os.environ and os.environ[B] == "before"


def test_overlapping_scopes_leave_nothing_behind() -> None:
    # As two threads would: the outer scope ends first; the inner one changed nothing, so puts back nothing.
    outer, inner = environment({A: "1"}), environment({A: "1"}, override=True)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    assert A not in os.environ


def _probe(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, str | None]:
    """Run the harness's callback on an app of two probe commands, as the harness's commands run;
    returns what the `show` command saw of the quiet settings."""
    names = [*MLFLOW_QUIET, *QUIET_LIBRARIES]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # the user's choice stands
    probe = typer.Typer()
    probe.callback()(_quiet_libraries)
    probe.command("show")(lambda: print(json.dumps({name: os.environ.get(name) for name in names})))
    probe.command("other")(lambda: None)
    before = dict(os.environ)
    result = CliRunner().invoke(probe, [*args, "show"])
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    return json.loads(result.output)


def test_the_cli_quiets_mlflow_and_the_libraries_for_the_command_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _probe(monkeypatch)
    assert seen == {**MLFLOW_QUIET, **QUIET_LIBRARIES, "MLFLOW_DISABLE_TELEMETRY": "false"}


def test_verbose_leaves_the_libraries_notices_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _probe(monkeypatch, "--verbose")
    assert seen == {**MLFLOW_QUIET, "MLFLOW_DISABLE_TELEMETRY": "false"} | dict.fromkeys(QUIET_LIBRARIES)


def test_the_quiet_settings_are_the_libraries_own() -> None:
    # They are named as strings (the CLI sets them before importing MLflow or Ray): a rename would go unnoticed.
    names = {v.name for v in vars(mlflow.environment_variables).values() if hasattr(v, "name")}
    assert set(MLFLOW_QUIET) | {"MLFLOW_LOGGING_LEVEL"} <= names
    assert "RAY_AIR_NEW_OUTPUT" in ray.air.constants.AIR_ENV_VARS
    assert set(QUIET_LIBRARIES) == {"MLFLOW_LOGGING_LEVEL", "RAY_AIR_NEW_OUTPUT"}


# The sweep command's set-up of an embedded Ray in a process that has not imported Ray, with and
# without --verbose: prints the authentication mode the command would start Ray with.
EMBEDDED = """
import json, os, sys, typer
from typer.testing import CliRunner
from harness.cli import _embedded_ray_on_loopback, _quiet_libraries
probe = typer.Typer()
probe.callback()(_quiet_libraries)
@probe.command("sweep")
def sweep(ctx: typer.Context) -> None:
    _embedded_ray_on_loopback(ctx)
    print(json.dumps(os.environ.get("RAY_AUTH_MODE")))
assert "ray" not in sys.modules
print(CliRunner().invoke(probe, sys.argv[1:] + ["sweep"]).output.strip())
"""


@pytest.mark.parametrize(("args", "mode"), [([], QUIET_EMBEDDED_RAY["RAY_AUTH_MODE"]), (["--verbose"], None)])
def test_an_embedded_ray_is_told_its_auth_mode_unless_verbose(args: list[str], mode: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    probe = subprocess.run(
        [sys.executable, "-c", EMBEDDED, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == mode


def _third_party_imports() -> list[str]:
    """Return every module path the harness and the baselines import from other packages."""
    found = set()
    for path in sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "baselines").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return sorted(name for name in found if name.split(".")[0] not in ("harness", "baselines"))


# Imports what the harness imports from elsewhere (some of it sets variables of its own), then every
# harness and baselines module, and prints what the second step changed in os.environ.
PROBE = """
import importlib, json, os, pkgutil, sys
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # a name imported from a module, not a module itself
before = dict(os.environ)
for package in ("harness", "baselines"):
    path = importlib.import_module(package).__path__
    for module in pkgutil.walk_packages(path, package + "."):
        if not module.name.endswith("__main__"):  # `python -m harness` runs the CLI
            importlib.import_module(module.name)
after = dict(os.environ)
changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
print(json.dumps({k: [before.get(k), after.get(k)] for k in changed}))
"""


def test_importing_every_harness_module_leaves_the_environment_alone() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TUNE_", "RAY_"))}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(_third_party_imports())],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == {}
