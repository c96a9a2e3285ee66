"""The histo-harness model zoo: `baselines.create(name, ...)` builds any registered baseline."""

from __future__ import annotations

from . import attention_gate, gusa, idc_small, mil, transfer  # noqa: F401  (importing a family registers it)
from ._counting import param_counts
from ._registry import BaselineInfo, PublishedCount, UnknownBaselineError, create, info, list_baselines, register
from ._summary import ModelSummary, summarise, summarise_all

list = list_baselines  # noqa: A001  (the documented public name is baselines.list())

__all__ = [
    "BaselineInfo",
    "ModelSummary",
    "PublishedCount",
    "UnknownBaselineError",
    "create",
    "info",
    "list",
    "list_baselines",
    "param_counts",
    "register",
    "summarise",
    "summarise_all",
]
