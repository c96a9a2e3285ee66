"""Attention-based multiple-instance learning (Ilse et al. 2018) as 000's co-author coded it
(BASELINES.md §2.14): an image is a bag of 28x28 patches, attention pools their features."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register
from ._weights import load_state_dict_file, local_weights_file


class AttentionMIL(nn.Module):
    """LeNet-like instance encoder, (gated) attention pooling over the bag, linear classifier."""

    def __init__(
        self, num_classes: int, *, embed_dim: int, attention_dim: int, gated: bool, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 20, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, embed_dim),
            nn.ReLU(inplace=True),
        )
        self.attention_v = nn.Linear(embed_dim, attention_dim)
        self.attention_u = nn.Linear(embed_dim, attention_dim) if gated else None
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.grid = grid

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify bags (B x N x 3 x 28 x 28); `attention` is B x N and sums to 1 over each bag."""
        b, n = bags.shape[:2]
        h = self.encoder(bags.flatten(0, 1)).view(b, n, -1)
        e = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            e = e * torch.sigmoid(self.attention_u(h))
        attention = self.attention_w(e).squeeze(-1).softmax(1)
        outputs = {"logits": self.classifier((attention.unsqueeze(-1) * h).sum(1)), "attention": attention}
        if n == self.grid[0] * self.grid[1]:
            # As S-000 draws it: each weight over the bag's largest, laid back on the patch grid.
            peak = attention.amax(1, keepdim=True).clamp_min(1e-12)
            outputs["attention_map"] = (attention / peak).view(b, 1, *self.grid)
        return outputs


@register(
    "amil",
    framework="pytorch",
    input_size=(448, 700),
    outputs=("logits", "attention", "attention_map"),
    input_kind="bag",
)
def amil(
    num_classes: int,
    pretrained: str | None = None,
    embed_dim: int = 500,
    attention_dim: int = 128,
    gated: bool = False,
    grid_rows: int = 16,
    grid_cols: int = 25,
) -> nn.Module:
    """Return A-MIL; the default 16 x 25 grid is a BreakHis image centre-cropped to 448 x 700."""
    model = AttentionMIL(
        num_classes, embed_dim=embed_dim, attention_dim=attention_dim, gated=gated, grid=(grid_rows, grid_cols)
    )
    weights = local_weights_file(pretrained)
    if weights is not None:
        load_state_dict_file(model, weights, what="amil")
    return model
