"""The two CNNs of the Moravčík thesis (2021, §5.2), trained from scratch on 48×48 grayscale FER2013 faces.

``moravcik_base`` (Table 5.1), "a variation of LeNet-5": three blocks of one 3×3 convolution (64, 128,
160 filters, stride 1, same padding) and 2×2 max pooling, flatten, a 160-unit dense layer, the output
layer; no regularisation.

``moravcik_final`` (Table 5.2), "based on VGG": blocks of [conv → BN → conv → BN → max pool → dropout]
with 64, 64 | 128, 128 | 256, 256 | 256, 256 filters, flatten, Dense(256) → BN → dropout, the output
layer. Four blocks for the single CNN; the decision tree's networks use 2 or 3 (Table 5.3:
``model.moravcik_blocks``).

Read literally as the thesis's Keras: ReLU is the hidden activation of every convolution and dense layer
(§5.1.3), applied by the layer itself, so batch normalisation follows the activation (Keras'
``Conv2D(activation="relu")`` then ``BatchNormalization``); convolutions and dense layers have biases.
Not stated, chosen here: dropout 0.25 after each block and after the dense layer (the thesis applies
"less dropout" thanks to batch normalisation, without a figure). Inputs are rescaled to [0, 1] (its
min-max normalisation), and the flattening fixes the input at 48×48: the harness resizes to it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ferbench.backbones.conv_fc import ConvFcCNN
from ferbench.backbones.registry import BackboneInfo, BackboneOptions, check_state_dict, load_state_dict_file, register_backbone

INPUT_SIZE = 48
BASE_WIDTHS = (64, 128, 160)
BASE_HIDDEN = 160
FINAL_WIDTHS = (64, 128, 256, 256)
FINAL_HIDDEN = 256
DROPOUT = 0.25


class FlattenCNN(ConvFcCNN):
    """A convolutional trunk (``features``), flatten and one hidden dense layer (``neck``), the output layer
    (``classifier``)."""

    def __init__(self, features: nn.Sequential, channels: int, side: int, neck_tail: list[nn.Module], hidden: int,
                 num_classes: int):
        super().__init__()
        self.features = features
        self.feature_channels = channels
        self.num_features = hidden
        self.pool = nn.Identity()  # the flattening keeps every position
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True), *neck_tail)
        self.classifier = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()


def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]


def moravcik_base(num_classes: int, in_chans: int = 1) -> FlattenCNN:
    layers: list[nn.Module] = []
    channels = in_chans
    for width in BASE_WIDTHS:
        layers += [*_conv(channels, width), nn.MaxPool2d(2)]
        channels = width
    side = INPUT_SIZE // 2 ** len(BASE_WIDTHS)
    return FlattenCNN(nn.Sequential(*layers), channels, side, [], BASE_HIDDEN, num_classes)


def moravcik_final(num_classes: int, in_chans: int = 1, blocks: int = 4, dropout: float = DROPOUT) -> FlattenCNN:
    if not 1 <= blocks <= len(FINAL_WIDTHS):
        raise ValueError(f"model.moravcik_blocks: {blocks} is not 1..{len(FINAL_WIDTHS)}; the thesis uses 4, and 2 or 3 in its tree")
    layers: list[nn.Module] = []
    channels = in_chans
    for width in FINAL_WIDTHS[:blocks]:
        layers += [*_conv(channels, width), nn.BatchNorm2d(width), *_conv(width, width), nn.BatchNorm2d(width),
                   nn.MaxPool2d(2), nn.Dropout(dropout)]
        channels = width
    side = INPUT_SIZE // 2 ** blocks
    tail = [nn.BatchNorm1d(FINAL_HIDDEN), nn.Dropout(dropout)]
    return FlattenCNN(nn.Sequential(*layers), channels, side, tail, FINAL_HIDDEN, num_classes)


def _info(name: str, description: str) -> BackboneInfo:
    return BackboneInfo(name=name, family="cnn", input_size=INPUT_SIZE, in_chans=1, channel_order="GRAY", mean=(0.0,),
                        std=(1.0,), description=description, fixed_input_size=True)


def _load(model: nn.Module, name: str, weights_file: Path | None) -> nn.Module:
    """Weights of the same network (e.g. an arm of an earlier study), its output layer excepted."""
    if weights_file is not None:
        state = {k: v for k, v in load_state_dict_file(weights_file).items() if not k.startswith("classifier.")}
        check_state_dict(model, state, name, weights_file, ignore_missing=("classifier.",))
        model.load_state_dict(state, strict=False)
    return model


MORAVCIK_BASE = _info("moravcik_base", "Moravčík 2021 base CNN (Table 5.1): conv 64/128/160 + max-pool, dense 160; 48×48 gray")
MORAVCIK_FINAL = _info("moravcik_final", "Moravčík 2021 final CNN (Table 5.2): 4 × [conv-BN-conv-BN-pool-dropout] "
                                         "64/128/256/256, dense 256; 48×48 gray")


@register_backbone(MORAVCIK_BASE)
def build_moravcik_base(info: BackboneInfo, num_classes: int, weights_file: Path | None,
                        options: BackboneOptions | None = None) -> nn.Module:
    return _load(moravcik_base(num_classes, info.in_chans), info.name, weights_file)


@register_backbone(MORAVCIK_FINAL)
def build_moravcik_final(info: BackboneInfo, num_classes: int, weights_file: Path | None,
                         options: BackboneOptions | None = None) -> nn.Module:
    blocks = (options or BackboneOptions()).moravcik_blocks
    return _load(moravcik_final(num_classes, info.in_chans, blocks), info.name, weights_file)
