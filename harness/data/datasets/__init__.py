"""The datasets the harness indexes, by name: `dataset("idc")`, `dataset_names()`.

Each module of this package describes one published dataset (its layout, protocol, label sets
and index function) and registers it; every module here is imported when the package is, so a
new dataset is one file in this folder (plus its test).
"""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import (
    Dataset,
    DatasetSpec,
    DatasetTraits,
    MaskSource,
    NamedProtocol,
    PublishedProtocol,
    UnknownDatasetError,
    dataset,
    dataset_names,
    register_dataset,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Dataset",
    "DatasetSpec",
    "DatasetTraits",
    "MaskSource",
    "NamedProtocol",
    "PublishedProtocol",
    "UnknownDatasetError",
    "dataset",
    "dataset_names",
    "register_dataset",
]
