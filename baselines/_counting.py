"""Parameter counts in the three conventions of BASELINES.md §0.4."""

from __future__ import annotations

from torch import nn


def param_counts(model: nn.Module) -> dict[str, int]:
    """Return the torch, keras (with BN running stats) and weights-only (no BN) parameter counts."""
    torch_count = sum(p.numel() for p in model.parameters())
    bn = sum(m.num_features for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine)
    return {"torch": torch_count, "keras": torch_count + 2 * bn, "weights_only": torch_count - 2 * bn}
