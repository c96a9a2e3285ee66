"""What each dataset offers the rest of the harness: classes, image size, masks, input kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import bach, breakhis, idc

if TYPE_CHECKING:
    from harness.config import DatasetSpec


@dataclass(frozen=True)
class DatasetTraits:
    """The facts about a configured dataset that decide which baselines can train on it and how."""

    class_names: tuple[str, ...]
    storage: Literal["patches", "images"]
    size: tuple[int, int]
    mask_source: Literal["none", "files", "tissue"]
    input_kinds: frozenset[str]


# Working resolutions (height, width): 001's 512x384 for BACH, BreakHis as published.
DEFAULT_SIZE = {"idc": (idc.PATCH_SIZE, idc.PATCH_SIZE), "bach": (384, 512), "breakhis": (460, 700)}


def dataset_traits(spec: DatasetSpec) -> DatasetTraits:
    """Return the traits of a configured dataset."""
    if spec.name == "idc":
        return DatasetTraits(idc.CLASS_NAMES, "patches", DEFAULT_SIZE["idc"], "none", frozenset({"image"}))
    names = bach.CLASS_NAMES if spec.name == "bach" else breakhis.class_names(spec.label)
    masks = "files" if spec.roi_dir is not None else ("tissue" if spec.roi_fallback == "tissue" else "none")
    size = tuple(spec.image_size) if spec.image_size else DEFAULT_SIZE[spec.name]
    return DatasetTraits(names, "images", size, masks, frozenset({"image", "bag"}))
