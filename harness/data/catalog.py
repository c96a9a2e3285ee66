"""What each dataset offers the rest of the harness: classes, patch size, masks, input kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import idc


@dataclass(frozen=True)
class DatasetTraits:
    """The facts about a dataset that decide which baselines can train on it."""

    class_names: tuple[str, ...]
    patch_size: int
    has_roi_masks: bool
    input_kind: Literal["image", "bag"]


DATASETS = {"idc": DatasetTraits(class_names=idc.CLASS_NAMES, patch_size=idc.PATCH_SIZE, has_roi_masks=False, input_kind="image")}
