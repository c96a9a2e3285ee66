"""Production code (harness/, baselines/) uses Ray and MLflow through their public API; what it cannot
do so lives in the one adapter module (harness/ray_compat.py). No unittest.mock outside tests."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

from tests.conftest import REPO

ADAPTERS = {"harness/ray_compat.py"}
LIBRARIES = ("ray", "mlflow")
# A dotted path under ray. or mlflow. with a component starting with "_" ("ray.train._internal.storage").
PRIVATE_PATH = re.compile(r"^(ray|mlflow)(\.\w+)*\._\w*")


def _sources() -> dict[str, ast.Module]:
    """Return the syntax tree of every production module, by its path from the repository root."""
    paths = sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "baselines").rglob("*.py")])
    return {path.relative_to(REPO).as_posix(): ast.parse(path.read_text()) for path in paths}


def _imported(tree: ast.Module) -> list[str]:
    """Return the dotted path of every module or name `tree` imports (absolute imports only)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _private(path: str) -> bool:
    """Return whether dotted `path` is under ray or mlflow and has a component starting with `_`."""
    parts = path.split(".")
    return parts[0] in LIBRARIES and any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def test_no_production_module_imports_unittest_mock() -> None:
    offenders = [f"{path}: {name}" for path, tree in _sources().items() for name in _imported(tree)]
    assert [o for o in offenders if o.split(": ")[1].startswith("unittest")] == []


def test_no_production_module_imports_a_private_part_of_ray_or_mlflow() -> None:
    offenders = [f"{path}: {name}" for path, tree in _sources().items() for name in _imported(tree) if _private(name)]
    assert offenders == []


def _library_names(tree: ast.Module) -> set[str]:
    """Return the names `tree` binds by importing from ray or mlflow."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in LIBRARIES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in LIBRARIES:
            bound |= {a.asname or a.name for a in node.names}
    return bound


def _reaches_in(attribute: ast.Attribute, bound: set[str]) -> bool:
    """Return whether attribute chain `attribute` starts at a name from ray or mlflow and names a private part."""
    chain: list[str] = []
    node: ast.expr = attribute
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    root = node.id if isinstance(node, ast.Name) else None
    return root in bound and any(a.startswith("_") and not a.startswith("__") for a in chain)


def _reach_ins(tree: ast.Module) -> list[str]:
    """Return each place `tree` reaches past the public API: a private attribute of a name imported
    from ray or mlflow, a private module path as a string, any use of Tune's controller."""
    bound, found = _library_names(tree), []
    # `ray._private.worker` is one reach-in, not two: only whole chains are checked.
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner and _reaches_in(node, bound):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        # Logger names and module paths given as strings ("ray.train._internal.storage").
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_PATH.match(node.value):
            found.append(f"{node.lineno}: {node.value!r}")
        # What a scheduler asks of Tune's controller goes through harness.ray_compat.
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tune_controller":
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda place: int(place.split(":")[0]))


def test_only_the_adapter_reaches_into_ray_or_mlflow() -> None:
    checked = {path: tree for path, tree in _sources().items() if path not in ADAPTERS}
    assert [f"{path}:{place}" for path, tree in checked.items() for place in _reach_ins(tree)] == []


def _base_privates(cls: type) -> set[str]:
    """Return the private attributes the Ray and MLflow classes `cls` derives from define or use."""
    names = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in LIBRARIES:
            names |= {name for name in vars(base) if name.startswith("_") and not name.startswith("__")}
            names |= set(re.findall(r"self\.(_[a-z]\w*)", inspect.getsource(base)))
    return names


def _self_attributes(node: ast.ClassDef) -> set[str]:
    """Return the attributes of `self` the class's methods use."""
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }


def test_no_subclass_of_a_ray_or_mlflow_class_touches_its_private_state() -> None:
    offenders = []
    for path, tree in _sources().items():
        if path.endswith("__main__.py"):
            continue  # importing it runs the CLI
        # A package's __init__.py is imported as the package (its module name has no __init__).
        module = importlib.import_module(path.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if isinstance(cls, type):
                touched = _self_attributes(node) & _base_privates(cls)
                offenders += [f"{path}: {node.name}.{name}" for name in sorted(touched)]
    assert offenders == []


def test_the_checks_catch_what_the_harness_used_to_do() -> None:
    # The imports, names and calls these tests were written against, before they moved or went.
    old = ast.parse(
        "from unittest import mock\n"
        "from mlflow.tracking._tracking_service.utils import _use_tracking_uri\n"
        "from ray.tune.schedulers.hyperband import _Bracket\n"
        "import ray\n"
        "logging.getLogger('ray.train._internal.storage')\n"
        "ray._private.worker\n"
        "tune_controller.stop_trial(trial)\n"
    )
    names = _imported(old)
    assert "unittest.mock" in names
    assert [n for n in names if _private(n)] == [
        "mlflow.tracking._tracking_service.utils",
        "mlflow.tracking._tracking_service.utils._use_tracking_uri",
        "ray.tune.schedulers.hyperband._Bracket",
    ]
    expected = ["5: 'ray.train._internal.storage'", "6: ray._private.worker", "7: tune_controller.stop_trial"]
    assert _reach_ins(old) == expected


def test_the_adapter_states_the_version_it_was_checked_against() -> None:
    for path in ADAPTERS:
        assert "checked against Ray 2.60" in (REPO / path).read_text()
