"""The convolutional and the fully connected layers of a CNN backbone: what the ``fc_only`` freezing policy keeps
frozen and trains, and what ``train.freeze.reinit_fc`` re-draws (the Moravčík thesis's transfer, §5.4: "keep
already learnt weights [of the convolutional layers] … replace last fully connected layers with new ones, and
initialize weights randomly").

A backbone has the split when its network is ``features`` → (parameter-free pooling) → ``neck`` → ``classifier``,
every parameter in one of those three, and its neck holds a dense layer:

- convolutional layers: ``features``, the convolution blocks with their batch normalisation (pooling and dropout
  have no weights);
- fully connected layers: ``neck`` (flatten, the hidden dense layer with its batch normalisation and dropout) and
  ``classifier`` (the output layer).

Of the registered backbones small_cnn, moravcik_base and moravcik_final have it (``conv_fc_backbones``). The timm
models and the face backbones do not name such parts and are refused, as is any backbone under a ``train.head``
other than ``linear``: that head replaces the neck and the output layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ferbench.backbones.heads import HeadedModel
from ferbench.backbones.keras_init import apply_keras_init
from ferbench.backbones.registry import get_backbone_info, list_backbones, meta_backbone


class ConvFcCNN(nn.Module):
    """``features`` → ``pool`` (parameter-free) → ``neck`` → ``classifier``: the split above, and the interface the
    heads use (``feature_channels``, ``forward_features``, ``strip_to_features``). Subclasses build the four parts and
    set ``num_features`` (the neck's width) and ``feature_channels`` (the last convolution's)."""

    features: nn.Module
    pool: nn.Module
    neck: nn.Module
    classifier: nn.Module
    num_features: int
    feature_channels: int

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def strip_to_features(self) -> None:
        self.neck = nn.Identity()

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.neck(self.pool(self.features(x))))


def fc_layers(model: nn.Module) -> list[nn.Module] | None:
    """``[neck, classifier]``, the fully connected layers, when ``model`` has the split; None when it has not."""
    features, neck = getattr(model, "features", None), getattr(model, "neck", None)
    if not isinstance(features, nn.Module) or not isinstance(neck, nn.Module):
        return None
    if not any(isinstance(module, nn.Linear) for module in neck.modules()):
        return None
    classifier = model.get_classifier()
    split = {id(p) for part in (features, neck, classifier) for p in part.parameters()}
    if any(id(p) not in split for p in model.parameters()):  # weights between or beside the parts: no clean split
        return None
    return [neck, classifier]


def conv_fc_backbones() -> list[str]:
    """The registered backbones with the split (read on the meta device: no weights, no memory). Only the custom
    CNNs (family ``cnn``) are built: the timm and face networks never have the parts, and building them costs seconds."""
    custom = [name for name in list_backbones() if get_backbone_info(name).family == "cnn"]
    return [name for name in custom if fc_layers(meta_backbone(name)) is not None]


def require_fc_layers(model: nn.Module, setting: str, backbone: str = "this backbone") -> list[nn.Module]:
    """``fc_layers(model)``, or a one-line ValueError naming ``setting``, the backbones that have the split and the fix."""
    layers = fc_layers(model)
    if layers is not None:
        return layers
    why = (f"{backbone}'s train.head replaces its fully connected layers with the head; use train.head=linear"
           if isinstance(model, HeadedModel) else f"{backbone} has no such split; use head_only or last_k for it")
    verb = "need" if " and " in setting else "needs"
    raise ValueError(f"{setting} {verb} convolution layers followed by fully connected ones (features, neck, classifier), "
                     f"as {', '.join(conv_fc_backbones())} have; {why}")


@torch.no_grad()
def reinit_fc(model: nn.Module, random_init: str = "torch") -> None:
    """Re-draw the fully connected layers (batch-norm statistics included) as new layers would be drawn: by each
    layer's own initialiser (``random_init="torch"``) or Keras' (``"keras"``), from torch's RNG, so seeding torch
    first reproduces them."""
    for layer in require_fc_layers(model, "train.freeze.reinit_fc"):
        if random_init == "keras":
            apply_keras_init(layer)
            continue
        for module in layer.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
