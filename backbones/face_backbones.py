"""The face-recognition backbones of the Smelyakov study: deepface's PyTorch VGG-Face and OpenFace.

deepface's own modules are used unchanged, so its published ``.pth`` weights load as they are;
the recognition heads are removed as in the paper (VGG-Face's fc8, the 2,622-identity
classifier) and a dense classifier sits on the embedding. Both accept inputs smaller than their
native size: VGG-Face's fc6 (a 7×7 convolution) sees an adaptive 7×7 pooling of conv5
(identical at 224 px). OpenFace's inception blocks pad their pooling branches by fixed amounts
that only fit 96 px, as in the Keras original, so OpenFace always gets 96×96 inputs (the harness
resizes on the device; the report shows the size each arm used).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from deepface.models.facial_recognition.pytorch import OpenFace, VGGFace
from torch import nn

from backbones.registry import TORCH_DEFAULT_INIT, BackboneInfo, load_state_dict_file, register_backbone

DEEPFACE_RELEASES = "https://github.com/serengil/deepface_models/releases/download/v1.0"


class VGGFaceClassifier(nn.Module):
    """VGG-Face trunk (conv1_1 … fc7, descriptor = ReLU(fc7), 4096-d) + a dense classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.trunk = VGGFace.VggFaceBaseModel(include_top=False)
        # fc6 is a 7×7 convolution over conv5's 7×7 map at 224 px; pool to 7×7 for other sizes.
        self.trunk.fc6.register_forward_pre_hook(lambda _, args: (F.adaptive_avg_pool2d(args[0], 7),))
        self.num_features, self.feature_channels = 4096, 512
        self.classifier = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def strip_to_features(self) -> None:
        self.trunk.fc6, self.trunk.fc7 = nn.Identity(), nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """conv5_3 after its pooling: the (B, 512, H/32, W/32) maps fc6 reads."""
        t = self.trunk
        blocks = ((t.conv1_1, t.conv1_2), (t.conv2_1, t.conv2_2), (t.conv3_1, t.conv3_2, t.conv3_3),
                  (t.conv4_1, t.conv4_2, t.conv4_3), (t.conv5_1, t.conv5_2, t.conv5_3))
        for block in blocks:
            for conv in block:
                x = t.relu(conv(x))
            x = t.pool(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk.embed(x))


class OpenFaceClassifier(nn.Module):
    """OpenFace trunk (128-d L2-normalised embedding, Dense(128) included) + a dense classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.trunk = OpenFace.OpenFaceNet()
        self.num_features, self.feature_channels = 128, 736
        self.classifier = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def strip_to_features(self) -> None:
        self.trunk.dense_layer = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """inception_5b's (B, 736, 3, 3) maps, caught on the way through deepface's forward."""
        captured: list[torch.Tensor] = []
        handle = self.trunk.inception_5b.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.trunk(x)
        finally:
            handle.remove()
        return captured[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def _load_trunk(trunk: nn.Module, weights_file: Path, name: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load deepface's state_dict (or one saved from these classifiers, whose trunk keys carry a
    ``trunk.`` prefix) into the trunk, refusing mismatches with a message naming the file."""
    state = {
        k.removeprefix("trunk."): v
        for k, v in load_state_dict_file(weights_file).items()
        if not k.startswith(("classifier.", *ignore_prefixes))
    }
    try:
        trunk.load_state_dict(state)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"{weights_file}: not {name} weights ({first})") from None


DEEPFACE_INIT = f"{TORCH_DEFAULT_INIT} (deepface's PyTorch modules define no initialiser of their own)"
VGGFACE = BackboneInfo(
    name="vggface",
    family="face",
    input_size=224,
    in_chans=3,
    channel_order="BGR",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    pretrained_sources=(f"url:{DEEPFACE_RELEASES}/vgg_face_weights.pth",),
    description="VGG-Face (deepface PyTorch), fc7 descriptor 4096-d, BGR [0,1] 224×224",
    embedding_dim=4096,
    weight_filename="vgg_face_weights.pth",
    random_init=DEEPFACE_INIT,
)
OPENFACE = BackboneInfo(
    name="openface",
    family="face",
    input_size=96,
    in_chans=3,
    channel_order="BGR",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    pretrained_sources=(f"url:{DEEPFACE_RELEASES}/openface_weights.pth",),
    description="OpenFace nn4.small2 (deepface PyTorch), 128-d L2-normalised, BGR [0,1] 96×96",
    embedding_dim=128,
    weight_filename="openface_weights.pth",
    fixed_input_size=True,
    random_init=DEEPFACE_INIT,
)


@register_backbone(VGGFACE)
def build_vggface(info: BackboneInfo, num_classes: int, weights_file: Path | None) -> nn.Module:
    model = VGGFaceClassifier(num_classes)
    if weights_file is not None:
        _load_trunk(model.trunk, weights_file, "VGG-Face", ignore_prefixes=("fc8.",))
    return model


@register_backbone(OPENFACE)
def build_openface(info: BackboneInfo, num_classes: int, weights_file: Path | None) -> nn.Module:
    model = OpenFaceClassifier(num_classes)
    if weights_file is not None:
        _load_trunk(model.trunk, weights_file, "OpenFace")
    return model
