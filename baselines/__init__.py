"""The histo-harness model zoo: `baselines.create(name, ...)` builds any registered baseline."""

from __future__ import annotations

from . import idc_small, transfer  # noqa: F401  (importing a family registers its models)
from ._counting import param_counts
from ._registry import BaselineInfo, UnknownBaselineError, create, info, list_baselines, register

list = list_baselines  # noqa: A001  (the documented public name is baselines.list())

__all__ = [
    "BaselineInfo",
    "UnknownBaselineError",
    "create",
    "info",
    "list",
    "list_baselines",
    "param_counts",
    "register",
]
