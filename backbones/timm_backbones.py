"""timm-backed backbones: the paper's ImageNet networks and any ``timm:<name>`` model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from backbones.registry import BackboneInfo, BackboneOptions, register_backbone


RESNET_INIT = (
    "timm's ResNet.init_weights: convs Kaiming-normal (fan_out, ReLU), BatchNorm γ=1 β=0 except the last "
    "BatchNorm of every residual branch, γ=0 (zero_init_last); classifier PyTorch's default"
)
EFFICIENTNET_INIT = (
    "timm's efficientnet_init_weights (TensorFlow's): convs normal(0, √(2/fan_out)), BatchNorm γ=1 β=0, "
    "classifier uniform ±1/√num_classes, biases 0"
)


# The fields timm_info reads from timm's pretrained configs of the built-in entries, as timm 1.0
# has them: they register without importing timm, which takes 2–3 s (it pulls in torchvision).
# A test checks them against timm's own.
BUILTIN_PRETRAINED_CFGS: dict[str, dict[str, Any]] = {
    "resnet50.a1_in1k": {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                         "hf_hub_id": "timm/resnet50.a1_in1k"},
    "mobilenetv1_100.ra4_e3600_r224_in1k": {"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                            "hf_hub_id": "timm/mobilenetv1_100.ra4_e3600_r224_in1k"},
}
CFG_FIELDS = ("input_size", "mean", "std", "hf_hub_id")
# The activation Keras' include_top=False ResNet50 and MobileNet end with (conv5_block3_out,
# conv_pw_13_relu), in timm's modules: dropped by BackboneOptions.resnet_mobilenet_final_relu="drop".
FINAL_RELU = {"resnet50": "layer4.2.act3", "mobilenet_v1": "blocks.4.1.bn2.act"}


def timm_pretrained_cfg(timm_name: str) -> dict[str, Any]:
    """timm's pretrained config of ``architecture[.tag]`` as a dict ({} when timm has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name) if "." in timm_name else None
    if cfg is None:
        cfg = timm.models.get_pretrained_cfg(timm_name.split(".")[0])
    return cfg.to_dict() if cfg is not None else {}


def timm_info(
    name: str, timm_name: str, description: str = "", keras_conv_bias: bool = False,
    random_init: str = "the timm model's own initialiser (its init_weights / timm defaults)",
) -> BackboneInfo:
    """Metadata from timm's pretrained config (input size, normalisation, weight source)."""
    cfg = BUILTIN_PRETRAINED_CFGS.get(timm_name) or timm_pretrained_cfg(timm_name)
    full_name = timm_name if "." in timm_name else f"{timm_name}.{cfg['tag']}" if cfg.get("tag") else timm_name
    hub = cfg.get("hf_hub_id")
    return BackboneInfo(
        name=name,
        family="timm",
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        in_chans=3,
        channel_order="RGB",
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        pretrained_sources=(f"hf-hub:{hub}",) if hub else (),
        description=description or f"timm {full_name}",
        timm_name=full_name,
        keras_conv_bias=keras_conv_bias,
        random_init=random_init,
    )


def build_timm(info: BackboneInfo, num_classes: int, weights_file: Path | None,
               options: BackboneOptions | None = None) -> nn.Module:
    """Create the timm model; with a weights file, load it through timm (classifier re-initialised)."""
    import timm

    if weights_file is None:
        model = timm.create_model(info.timm_name, pretrained=False, num_classes=num_classes)
    else:
        model = timm.create_model(
            info.timm_name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay={"file": str(weights_file), "hf_hub_id": None, "url": None},
        )
    if (options or BackboneOptions()).resnet_mobilenet_final_relu == "drop" and info.name in FINAL_RELU:
        drop_activation(model, FINAL_RELU[info.name])
    model.feature_channels = model.num_features  # channels of forward_features' maps
    return model


def drop_activation(model: nn.Module, path: str) -> None:
    """Replace the activation at ``path`` by the identity (parameter-free: the state_dict is unchanged)."""
    parent, _, name = path.rpartition(".")
    if not isinstance(model.get_submodule(path), (nn.ReLU, nn.ReLU6)):
        raise TypeError(f"{path} of {type(model).__name__} is {type(model.get_submodule(path)).__name__}, not a ReLU")
    setattr(model.get_submodule(parent), name, nn.Identity())


register_backbone(
    timm_info("resnet50", "resnet50.a1_in1k", "ResNet-50 (timm resnet50), ImageNet-1k", keras_conv_bias=True,
              random_init=RESNET_INIT)
)(build_timm)
register_backbone(
    timm_info("mobilenet_v1", "mobilenetv1_100.ra4_e3600_r224_in1k", "MobileNet v1 1.0 (timm mobilenetv1_100), ImageNet-1k",
              random_init=EFFICIENTNET_INIT)
)(build_timm)
