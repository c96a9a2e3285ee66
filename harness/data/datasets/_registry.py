"""Name -> dataset registry, and the configured dataset (`DatasetSpec`) it validates.

A dataset module registers one `Dataset`: its layout, published protocol, label sets, traits,
the `DatasetSpec` keys it reads, and its index function. Everything else (config validation,
`harness data index`, preparation, the CLI) asks this registry by name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..records import IndexResult

MaskSource = Literal["none", "files", "tissue"]
# DatasetSpec keys every dataset reads; a dataset lists the others it reads in `Dataset.options`.
COMMON_OPTIONS = frozenset(
    {"name", "root", "manifest", "allow_subset", "skip_bad", "strict", "label", "stain_reference"}
)


class DatasetSpec(BaseModel):
    """Which dataset, where it lies, how strictly to check it, and how its images are prepared.

    Keys beyond the common ones apply only to datasets that list them in `Dataset.options`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    root: Path
    manifest: Path | None = None
    allow_subset: bool = False
    skip_bad: bool = False
    # Refuse a non-RGB image instead of converting it (each is reported by path either way).
    strict: bool = False
    edge_patches: Literal["pad", "drop"] = "pad"
    roi_dir: Path | None = None
    roi_fallback: Literal["none", "tissue"] = "none"
    # A label set of the dataset (`Dataset.labels`); None: its first.
    label: str | None = None
    group_by: Literal["numeric_core", "folder"] = "numeric_core"
    magnification: Literal["all", 40, 100, 200, 400] = "all"
    image_size: tuple[int, int] | None = None
    stain: Literal["none", "reinhard", "macenko"] = "none"
    stain_reference: Path | None = None

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        try:
            dataset(name)
        except UnknownDatasetError as exc:
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _options_fit_the_dataset(self) -> DatasetSpec:
        entry = dataset(self.name)
        for key, spec in DatasetSpec.model_fields.items():
            if key not in COMMON_OPTIONS | entry.options and getattr(self, key) != spec.default:
                readers = [d.name for d in _REGISTRY.values() if key in d.options]
                raise ValueError(f"{key} applies to {' and '.join(readers)} only, not to {self.name}")
        if self.label is not None and self.label not in entry.labels:
            raise ValueError(f"label {self.label!r}: {self.name}'s label sets are {', '.join(entry.labels)}")
        if self.roi_dir is not None and self.roi_fallback != "none":
            raise ValueError("give roi_dir or roi_fallback, not both")
        if self.stain != "none" and self.stain_reference is None:
            raise ValueError(f"stain {self.stain} needs stain_reference, an image file to normalise to")
        if self.stain_reference is not None and not self.stain_reference.is_file():
            raise ValueError(f"stain_reference {str(self.stain_reference)!r} is not a file")
        return self

    @property
    def mask_source(self) -> MaskSource:
        """Return where the RoI masks come from: a folder of files, the tissue fallback, or nowhere."""
        return "files" if self.roi_dir is not None else ("tissue" if self.roi_fallback == "tissue" else "none")

    def traits(self) -> DatasetTraits:
        """Return what this dataset offers the rest of the harness (classes, size, masks, inputs)."""
        return dataset(self.name).traits(self)


@dataclass(frozen=True)
class DatasetTraits:
    """The facts about a configured dataset that decide which baselines can train on it and how."""

    class_names: tuple[str, ...]
    storage: Literal["patches", "images"]
    size: tuple[int, int]
    mask_source: MaskSource
    input_kinds: frozenset[str]


@dataclass(frozen=True)
class PublishedProtocol:
    """A dataset's published facts: where they are written down, the counts a full release has
    (indexing checks them unless `allow_subset`), and whether it publishes patient ids."""

    source: str
    counts: dict[str, Any]
    patient_ids: bool = True


# Returns the rows of a manifest a named protocol keeps (relabelled into its class set, index reset)
# and, per kept row, whether it lies in the protocol's test part.
AssignFunction = Callable[[pd.DataFrame], tuple[pd.DataFrame, np.ndarray]]


@dataclass(frozen=True)
class NamedProtocol:
    """A published train/test assignment of a dataset (`protocol.name` other than patient): where
    it is written down, the label set and the `DatasetSpec` keys it fixes, its part sizes on the
    full release (checked unless `allow_subset`), and the function assigning a manifest's rows."""

    source: str
    # What it keeps and how it splits, in words (notes, errors, docs).
    description: str
    label: str
    fixes: dict[str, Any]
    counts: dict[str, int]
    assign: AssignFunction = field(repr=False)


# Returns the manifest (and what indexing reported) of the dataset a DatasetSpec names; its `path`
# column holds absolute paths below the resolved root, which a written manifest stores relative to it.
IndexFunction = Callable[[DatasetSpec, bool], IndexResult]
# Writes a small synthetic tree in the dataset's layout under a folder, from a seed; returns a
# line saying what was written.
SynthesiseFunction = Callable[[Path, int], str]


@dataclass(frozen=True)
class Dataset:
    """What the harness knows about a registered dataset, before reading any file of it."""

    name: str
    layout: str
    protocol: PublishedProtocol
    # Label set -> class names in label order; the first is the default.
    labels: dict[str, tuple[str, ...]]
    storage: Literal["patches", "images"]
    # Working resolution (height, width): patches as stored, images resized to it unless image_size.
    size: tuple[int, int]
    input_kinds: frozenset[str]
    index: IndexFunction = field(repr=False)
    synthesise: SynthesiseFunction = field(repr=False)
    # DatasetSpec keys beyond COMMON_OPTIONS that this dataset reads.
    options: frozenset[str] = frozenset()
    # `protocol.name` -> a published split of this dataset beyond the harness's own (patient).
    protocols: dict[str, NamedProtocol] = field(default_factory=dict)

    def traits(self, spec: DatasetSpec) -> DatasetTraits:
        """Return the traits of this dataset as `spec` configures it."""
        return DatasetTraits(
            class_names=self.labels[spec.label or next(iter(self.labels))],
            storage=self.storage,
            size=spec.image_size or self.size,
            mask_source=spec.mask_source,
            input_kinds=self.input_kinds,
        )


class UnknownDatasetError(KeyError):
    """Raised for a name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(entry: Dataset) -> Dataset:
    """Register `entry` under its name and return it; a duplicate name is refused."""
    if entry.name in _REGISTRY:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    unknown = entry.options - set(DatasetSpec.model_fields)
    if unknown:
        raise ValueError(f"dataset {entry.name!r} reads options DatasetSpec has not: {', '.join(sorted(unknown))}")
    _REGISTRY[entry.name] = entry
    return entry


def dataset(name: str) -> Dataset:
    """Return the registry entry of `name`, or raise UnknownDatasetError naming the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset {name!r}{hint} (registered: {', '.join(dataset_names())})"
        ) from None


def dataset_names() -> list[str]:
    """Return the registered names, sorted."""
    return sorted(_REGISTRY)
