"""Small CNNs of the IDC comparison (BASELINES.md §2.1-2.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ._keras import HE_UNIFORM, keras_layers
from ._registry import PublishedCount, register
from ._weights import load_state_dict_file, local_weights_file


class SmallCNN(nn.Module):
    """A feature stack and a classifier, returning {"logits": ...}; both parts are Grad-CAM's seams."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.forward_head(self.forward_features(x))}


def _with_weights(model: nn.Module, pretrained: str | None, name: str) -> nn.Module:
    weights = local_weights_file(pretrained)
    if weights is not None:
        load_state_dict_file(model, weights, what=name)
    return model


class SeparableConv2d(nn.Sequential):
    """Keras SeparableConv2D(3x3, same): depthwise conv without bias, then pointwise conv with bias."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=True),
        )


@register("cancernet", framework="keras", input_size=48)
def cancernet(
    num_classes: int, pretrained: str | None = None, dropout_conv: float = 0.25, dropout_fc: float = 0.5
) -> nn.Module:
    """Return PyImageSearch CancerNet (§2.1): three SepConv stages, FC 256; 48 or 50 px input."""
    layers: list[nn.Module] = []
    for in_ch, out_ch, depth in [(3, 32, 1), (32, 64, 2), (64, 128, 3)]:
        for i in range(depth):
            # CancerNet orders every block conv -> ReLU -> BN, unlike the usual conv -> BN -> ReLU.
            layers += [
                SeparableConv2d(in_ch if i == 0 else out_ch, out_ch),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(out_ch),
            ]
        layers += [nn.MaxPool2d(2), nn.Dropout(dropout_conv)]
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(128 * 6 * 6, 256),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(256),
        nn.Dropout(dropout_fc),
        nn.Linear(256, num_classes),
    )
    return _with_weights(SmallCNN(nn.Sequential(*layers), classifier), pretrained, "cancernet")


class SigmoidAsTwoLogits(nn.Module):
    """One sigmoid unit written as two logits [0, z]: softmax([0, z])[1] = sigmoid(z)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        return torch.cat([torch.zeros_like(z), z], 1)


@register(
    "idc_cnn",
    framework="keras",
    input_size=50,
    published=PublishedCount(389_441, "keras", reproduced=True, source="S-004 notebook (head: sigmoid)"),
)
def idc_cnn(
    num_classes: int, pretrained: str | None = None, head: Literal["softmax2", "sigmoid"] = "softmax2"
) -> nn.Module:
    """Return 004's proposed CNN (§2.2): conv -> ReLU -> MaxPool -> BN x3, conv 128, FC 128.

    `head: sigmoid` is the notebook's single sigmoid unit (binary only), whose Keras count is the
    published 389,441; the default two-logit softmax is equivalent for training.
    """
    if head == "sigmoid" and num_classes != 2:
        raise ValueError("head='sigmoid' is a binary head; use head='softmax2' for more classes")
    layers: list[nn.Module] = []
    for i, (in_ch, out_ch) in enumerate([(3, 32), (32, 64), (64, 128), (128, 128)]):
        conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")  # the notebook's he_uniform
        assert conv.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(conv.bias)
        keras_layers(conv, HE_UNIFORM)
        layers += [conv, nn.ReLU(inplace=True), nn.MaxPool2d(2)] + ([nn.BatchNorm2d(out_ch)] if i < 3 else [])
    out = SigmoidAsTwoLogits(128) if head == "sigmoid" else nn.Linear(128, num_classes)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU(inplace=True), out)
    return _with_weights(SmallCNN(nn.Sequential(*layers), classifier), pretrained, "idc_cnn")
