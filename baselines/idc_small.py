"""Small CNNs of the IDC comparison (BASELINES.md §2.1-2.2)."""

from __future__ import annotations

import torch
from torch import nn

from ._outputs import LogitsDict
from ._registry import register
from ._weights import local_weights_file


class SeparableConv2d(nn.Sequential):
    """Keras SeparableConv2D(3x3, same): depthwise conv without bias, then pointwise conv with bias."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=True),
        )


def _sep_relu_bn(in_ch: int, out_ch: int) -> list[nn.Module]:
    # CancerNet orders every block conv -> ReLU -> BN, unlike the usual conv -> BN -> ReLU.
    return [SeparableConv2d(in_ch, out_ch), nn.ReLU(inplace=True), nn.BatchNorm2d(out_ch)]


class CancerNet(nn.Module):
    """PyImageSearch CancerNet: three SepConv stages, FC 256, 2-way head (§2.1)."""

    def __init__(self, num_classes: int = 2, dropout_conv: float = 0.25, dropout_fc: float = 0.5) -> None:
        super().__init__()
        stages = [(3, 32, 1), (32, 64, 2), (64, 128, 3)]
        layers: list[nn.Module] = []
        for in_ch, out_ch, depth in stages:
            for i in range(depth):
                layers += _sep_relu_bn(in_ch if i == 0 else out_ch, out_ch)
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout_conv)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 6 * 6, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(dropout_fc),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("cancernet", input_size=48)
def cancernet(num_classes: int, pretrained: str | None = None, dropout_conv: float = 0.25, dropout_fc: float = 0.5) -> nn.Module:
    """Return CancerNet (48x48 or 50x50 input; both flatten to 128x6x6)."""
    model = CancerNet(num_classes, dropout_conv=dropout_conv, dropout_fc=dropout_fc)
    weights = local_weights_file(pretrained)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return LogitsDict(model)
