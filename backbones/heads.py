"""Classification heads of the papers, selectable per study (``train.head``).

- ``linear``: Smelyakov et al. — a dense classifier on the backbone's embedding (each backbone's
  own ``classifier``; the default).
- ``arsirii_pl``: Arsirii & Petrosiuk's pseudo-labelling head on the feature maps: Conv2D 64 (5×5),
  Conv2D 128 (5×5), Conv2D 256 (3×3), each with ReLU and 2×2 max-pooling, then Dense 128, Dense
  num_classes. Convolutions pad "same" and pooling rounds up, so 7×7 maps (224 px) end at 1×1;
  a global average pooling before Dense 128 (the identity there) lets other sizes fit too.
- ``arsirii_au``: the action-unit head: global average pooling → BatchNorm → ReLU → Dropout 0.2 →
  linear.
"""

from __future__ import annotations

from torch import nn

HEADS = ("linear", "arsirii_pl", "arsirii_au")


def arsirii_pl_head(in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels = in_channels
    for width, kernel in ((64, 5), (128, 5), (256, 3)):
        layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2, ceil_mode=True)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 128),
                         nn.ReLU(inplace=True), nn.Linear(128, num_classes))


def arsirii_au_head(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(in_channels), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(in_channels, num_classes))


class HeadedModel(nn.Module):
    """A backbone's feature maps (``forward_features``) followed by one of the papers' heads."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        # Layers after the feature maps (its classifier, VGG-Face's fc6/fc7, …) would otherwise
        # count as trunk layers for freezing and parameter counts without ever running.
        backbone.reset_classifier(0)
        if hasattr(backbone, "strip_to_features"):
            backbone.strip_to_features()
        self.backbone = backbone
        self.head = head

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x):
        return self.head(self.backbone.forward_features(x))


def attach_head(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Return ``model`` with ``head`` (``linear`` keeps the backbone's own classifier)."""
    if head == "linear":
        return model
    builders = {"arsirii_pl": arsirii_pl_head, "arsirii_au": arsirii_au_head}
    if head not in builders:
        raise ValueError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    return HeadedModel(model, builders[head](model.feature_channels, num_classes))
