"""ImageNet-architecture baselines from timm with a new head (BASELINES.md §2.3-2.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._keras import KERAS_EFFICIENTNETV2, keras_layers
from ._outputs import TimmClassifier
from ._registry import PublishedCount, register
from ._surgery import FreezeMode, freeze_parameters, require_weights_to_freeze, timm_model

if TYPE_CHECKING:
    from ._surgery import TimmNet


def _classifier(arch: str, num_classes: int, pretrained: str | None, mode: FreezeMode) -> nn.Module:
    """Return a timm classifier with a new head, frozen as asked (all but the head or last stage)."""
    require_weights_to_freeze(pretrained, mode)
    net = timm_model(arch, num_classes, pretrained)
    last_stage = net.get_submodule(net.feature_info[-1]["module"])
    return TimmClassifier(freeze_parameters(net, mode, head=net.get_classifier(), last_stage=last_stage))


@register("vgg16", framework="pytorch", input_size=50)
def vgg16(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return VGG-16 (timm `vgg16.tv_in1k`); at 50x50 its conv-MLP pools adaptively to 7x7."""
    return _classifier("vgg16.tv_in1k", num_classes, pretrained, freeze)


@register("resnet18", framework="pytorch", input_size=50)
def resnet18(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return ResNet-18 (torchvision weights layout, timm `resnet18.tv_in1k`) with a new FC head."""
    return _classifier("resnet18.tv_in1k", num_classes, pretrained, freeze)


@register("densenet121", framework="pytorch", input_size=50)
def densenet121(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return DenseNet-121 (timm `densenet121.tv_in1k`), the lighter IDC/BreakHis comparator."""
    return _classifier("densenet121.tv_in1k", num_classes, pretrained, freeze)


@register("densenet161", framework="pytorch", input_size=50)
def densenet161(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return DenseNet-161, the 004 notebook's "DenseNet" (timm `densenet161.tv_in1k`)."""
    return _classifier("densenet161.tv_in1k", num_classes, pretrained, freeze)


@register("densenet169", framework="pytorch", input_size=50)
def densenet169(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return DenseNet-169 as a plain comparator (the GuSA backbone, registered as an ordinary CNN)."""
    return _classifier("densenet169.tv_in1k", num_classes, pretrained, freeze)


class EfficientNetV2Head(nn.Module):
    """003's head: global max pool -> BN -> Linear 256 -> ReLU -> Dropout -> Linear (§2.6).

    003 puts L2 1e-5 on the 256-unit kernel and L1 1e-7 on its activations; both come out as
    `penalty`, which the loss adds.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, hidden: int, dropout: float, l2: float, l1_activity: float
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.hidden = nn.Linear(in_features, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)
        self.l2, self.l1_activity = l2, l1_activity

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activation = torch.relu(self.hidden(self.norm(features.amax((2, 3)))))
        penalty = self.l2 * self.hidden.weight.square().sum() + self.l1_activity * activation.abs().sum(1).mean()
        return self.fc(self.dropout(activation)), penalty


class EfficientNetV2Classifier(nn.Module):
    """A timm EfficientNetV2-S trunk with 003's head."""

    def __init__(self, trunk: TimmNet, head: EfficientNetV2Head) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)[0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, penalty = self.head(self.forward_features(x))
        return {"logits": logits, "penalty": penalty}


@register(
    "efficientnetv2_s",
    framework="keras",
    input_size=224,
    published=PublishedCount(4_300_000, "keras", reproduced=False, source='003 §3.6 ("4.3 million")'),
)
def efficientnetv2_s(
    num_classes: int,
    pretrained: str | None = None,
    freeze: FreezeMode = "none",
    dropout: float = 0.5,
    l2_head: float = 1e-5,
    head_hidden: int = 256,
) -> nn.Module:
    """Return EfficientNetV2-S (timm `tf_efficientnetv2_s.in1k`) with 003's max-pool head."""
    require_weights_to_freeze(pretrained, freeze)
    trunk = keras_layers(timm_model("tf_efficientnetv2_s.in1k", 0, pretrained, global_pool=""), KERAS_EFFICIENTNETV2)
    head = EfficientNetV2Head(
        trunk.num_features, num_classes, hidden=head_hidden, dropout=dropout, l2=l2_head, l1_activity=1e-7
    )
    model = EfficientNetV2Classifier(trunk, head)
    last_stage = trunk.get_submodule(trunk.feature_info[-1]["module"])
    return freeze_parameters(model, freeze, head=head, last_stage=last_stage)
