"""What each dataset offers the rest of the harness: classes, image size, masks, input kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import bach, breakhis, idc

MaskSource = Literal["none", "files", "tissue"]


@dataclass(frozen=True)
class DatasetTraits:
    """The facts about a configured dataset that decide which baselines can train on it and how."""

    class_names: tuple[str, ...]
    storage: Literal["patches", "images"]
    size: tuple[int, int]
    mask_source: MaskSource
    input_kinds: frozenset[str]


# Working resolutions (height, width): 001's 512x384 for BACH, BreakHis as published.
DEFAULT_SIZE = {"idc": (idc.PATCH_SIZE, idc.PATCH_SIZE), "bach": (384, 512), "breakhis": (460, 700)}


def dataset_traits(
    name: str, *, label: str = "binary", image_size: tuple[int, int] | None = None, mask_source: MaskSource = "none"
) -> DatasetTraits:
    """Return the traits of dataset `name` with BreakHis' `label` set, a working `image_size`
    (default: the dataset's) and where its RoI masks come from (IDC has none)."""
    if name == "idc":
        return DatasetTraits(idc.CLASS_NAMES, "patches", DEFAULT_SIZE["idc"], "none", frozenset({"image"}))
    names = bach.CLASS_NAMES if name == "bach" else breakhis.class_names(label)
    size = tuple(image_size) if image_size else DEFAULT_SIZE[name]
    return DatasetTraits(names, "images", size, mask_source, frozenset({"image", "bag"}))
