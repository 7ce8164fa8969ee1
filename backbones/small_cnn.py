"""A small CNN for 48×48 grayscale faces that trains in seconds on a CPU: FERBench's own quick baseline.

Three blocks of 3×3 convolution (32, 64, 128 channels), batch normalisation, ReLU and 2×2 max pooling,
global average pooling (so that it takes any input size), a 160-unit dense layer with dropout 0.3, the
output layer. Its shape recalls the Moravčík thesis's base model, but it is not that model: the thesis's
two CNNs, exactly as its Tables 5.1 and 5.2 give them, are ``moravcik_base`` and ``moravcik_final``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ferbench.backbones.conv_fc import ConvFcCNN
from ferbench.backbones.registry import BackboneInfo, BackboneOptions, check_state_dict, load_state_dict_file, register_backbone


class SmallCNN(ConvFcCNN):
    def __init__(
        self, num_classes: int, in_chans: int = 1, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 160, dropout: float = 0.3
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = hidden
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)
        self.feature_channels = channels


SMALL_CNN = BackboneInfo(
    name="small_cnn",
    family="cnn",
    input_size=48,
    in_chans=1,
    channel_order="GRAY",
    mean=(0.5,),
    std=(0.5,),
    description="3-block CNN (conv-BN-ReLU, max-pool; dense 160), 48×48 grayscale",
)


@register_backbone(SMALL_CNN)
def build_small_cnn(info: BackboneInfo, num_classes: int, weights_file: Path | None,
                    options: BackboneOptions | None = None) -> nn.Module:
    model = SmallCNN(num_classes, in_chans=info.in_chans)
    if weights_file is not None:
        state = {k: v for k, v in load_state_dict_file(weights_file).items() if not k.startswith("classifier.")}
        check_state_dict(model, state, "small_cnn", weights_file, ignore_missing=("classifier.",))
        model.load_state_dict(state, strict=False)
    return model
