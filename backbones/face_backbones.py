"""The face-recognition backbones of the Smelyakov study: deepface's PyTorch VGG-Face and OpenFace.

deepface's own modules are used unchanged, so its published ``.pth`` weights load as they are;
the recognition heads are removed and a dense classifier sits on the embedding. What remains is
an option (``BackboneOptions``): VGG-Face ends at ReLU(fc7), 4,096-d, as deepface's descriptor does
today, or at fc8 flattened, 2,622-d, as its descriptor did in 2022 (the Smelyakov paper's: the
2,622-identity scores before the softmax); OpenFace ends with its L2-normalised 128-d embedding, or
at Dense(128) without the normalisation (the paper's "last layer excluded"). Both accept inputs smaller than their
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

from ferbench.backbones.registry import (
    TORCH_DEFAULT_INIT, BackboneInfo, BackboneOptions, check_state_dict, load_state_dict_file, register_backbone,
)

DEEPFACE_RELEASES = "https://github.com/serengil/deepface_models/releases/download/v1.0"


class VGGFaceClassifier(nn.Module):
    """VGG-Face trunk + a dense classifier. ``descriptor="fc7"``: conv1_1 … fc7, ReLU(fc7), 4,096-d;
    ``"fc8"``: … fc7, dropout, fc8, flattened, 2,622-d (no activation, as deepface's 2022 Keras model)."""

    def __init__(self, num_classes: int, descriptor: str = "fc7"):
        super().__init__()
        if descriptor not in ("fc7", "fc8"):
            raise ValueError(f"unknown VGG-Face descriptor {descriptor!r}; allowed: fc7, fc8")
        self.descriptor = descriptor
        self.trunk = VGGFace.VggFaceBaseModel(include_top=descriptor == "fc8")
        # fc6 is a 7×7 convolution over conv5's 7×7 map at 224 px; pool to 7×7 for other sizes.
        self.trunk.fc6.register_forward_pre_hook(lambda _, args: (F.adaptive_avg_pool2d(args[0], 7),))
        self.num_features, self.feature_channels = (2622 if descriptor == "fc8" else 4096), 512
        self.classifier = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def strip_to_features(self) -> None:
        self.trunk.fc6, self.trunk.fc7 = nn.Identity(), nn.Identity()
        if self.trunk.fc8 is not None:
            self.trunk.fc8 = nn.Identity()

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

    def descriptor_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk.embed(x)
        if self.descriptor == "fc8":  # deepface's base model: dropout after fc7, then fc8, flattened
            x = torch.flatten(self.trunk.fc8(self.trunk.dropout(x)[:, :, None, None]), start_dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.descriptor_features(x))


class OpenFaceClassifier(nn.Module):
    """OpenFace trunk (Dense(128) included) + a dense classifier; ``l2_norm=False`` feeds the classifier
    Dense(128)'s output instead of its L2-normalised version."""

    def __init__(self, num_classes: int, l2_norm: bool = True):
        super().__init__()
        self.l2_norm = l2_norm
        self.trunk = OpenFace.OpenFaceNet()
        self.num_features, self.feature_channels = 128, 736
        self.classifier = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def strip_to_features(self) -> None:
        self.trunk.dense_layer = nn.Identity()

    def _output_of(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module``'s output, caught on the way through deepface's forward (which returns only the end)."""
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.trunk(x)
        finally:
            handle.remove()
        return captured[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """inception_5b's (B, 736, 3, 3) maps."""
        return self._output_of(self.trunk.inception_5b, x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d embedding: deepface's L2-normalised output, or Dense(128)'s (the paper's cut)."""
        return self.trunk(x) if self.l2_norm else self._output_of(self.trunk.dense_layer, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))


def _load_trunk(
    trunk: nn.Module, weights_file: Path, name: str, ignore_prefixes: tuple[str, ...] = (), required: str = ""
) -> None:
    """Load deepface's state_dict (or one saved from these classifiers, whose trunk keys carry a
    ``trunk.`` prefix) into the trunk, refusing mismatches with a message naming the file."""
    state = {
        k.removeprefix("trunk."): v
        for k, v in load_state_dict_file(weights_file).items()
        if not k.startswith(("classifier.", *ignore_prefixes))
    }
    if required and f"{required}.weight" not in state:
        raise ValueError(
            f"{weights_file}: has no {required} weights, which model.vggface_descriptor={required} keeps; use deepface's "
            "vgg_face_weights.pth (it has them) or model.vggface_descriptor=fc7"
        )
    check_state_dict(trunk, state, name, weights_file)
    trunk.load_state_dict(state)


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
def build_vggface(info: BackboneInfo, num_classes: int, weights_file: Path | None,
                  options: BackboneOptions | None = None) -> nn.Module:
    descriptor = (options or BackboneOptions()).vggface_descriptor
    model = VGGFaceClassifier(num_classes, descriptor)
    if weights_file is not None and descriptor == "fc8":
        _load_trunk(model.trunk, weights_file, "VGG-Face", required="fc8")
    elif weights_file is not None:
        _load_trunk(model.trunk, weights_file, "VGG-Face", ignore_prefixes=("fc8.",))
    return model


@register_backbone(OPENFACE)
def build_openface(info: BackboneInfo, num_classes: int, weights_file: Path | None,
                   options: BackboneOptions | None = None) -> nn.Module:
    model = OpenFaceClassifier(num_classes, l2_norm=(options or BackboneOptions()).openface_l2_norm)
    if weights_file is not None:
        _load_trunk(model.trunk, weights_file, "OpenFace")
    return model
