"""One row per baseline for `harness models`: sizes in every convention beside the published count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._counting import param_counts
from ._registry import create as create_model
from ._registry import info, list_baselines

# idc_cnn's published count is that of the notebook's single sigmoid unit.
_PUBLISHED_OPTIONS: dict[str, dict[str, Any]] = {"idc_cnn": {"head": "sigmoid"}}


@dataclass(frozen=True)
class ModelSummary:
    """A baseline's family, source framework, input, outputs and parameter counts against its published count."""

    name: str
    family: str
    framework: str
    input: str
    classes: int
    outputs: tuple[str, ...]
    loss: str
    counts: dict[str, int]
    published: int | None
    convention: str | None
    reproduced: bool | None

    @property
    def count_in_published_convention(self) -> int | None:
        """Return the harness count in the convention the published row used."""
        return self.counts[self.convention] if self.convention else None


def summarise(name: str) -> ModelSummary:
    """Build baseline `name` as its published row did (classes, head) and return its summary."""
    entry = info(name)
    # Counting needs shapes, not values: on the meta device no weights are allocated or initialised
    # (finetune's default encoder is a ViT-L).
    with torch.device("meta"):
        model = create_model(name, num_classes=entry.published_classes, **_PUBLISHED_OPTIONS.get(name, {}))
    counts = param_counts(model)
    published = entry.published
    height, width = entry.input_size
    kind = {"bag": "bag of 28x28 patches from ", "embedding": "embedding of "}.get(entry.input_kind, "")
    return ModelSummary(
        name=name,
        family=entry.family,
        framework=entry.framework,
        input=f"{kind}3x{height}x{width}",
        classes=entry.published_classes,
        outputs=entry.outputs,
        loss=entry.loss,
        counts=counts,
        published=published.count if published else None,
        convention=published.convention if published else None,
        reproduced=(counts[published.convention] == published.count) if published else None,
    )


def summarise_all() -> list[ModelSummary]:
    """Return the summary of every registered baseline, by name."""
    return [summarise(name) for name in list_baselines()]
