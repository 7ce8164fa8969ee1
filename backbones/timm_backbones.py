"""timm-backed backbones: the paper's ImageNet networks and any ``timm:<name>`` model."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ferbench.backbones.registry import (
    TIMM_PREFIX, BackboneFamily, BackboneInfo, BackboneOptions, describe_mismatch, load_state_dict_file, parse_load_error,
    register_backbone, register_family, state_dict_mismatch,
)


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
    cfg: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> BackboneInfo:
    """Metadata from timm's pretrained config (input size, normalisation, weight source); ``cfg``
    gives another one (a Hub repository's), ``extra`` what ``build_timm`` passes to timm with it."""
    if cfg is None:
        cfg = BUILTIN_PRETRAINED_CFGS.get(timm_name) or timm_pretrained_cfg(timm_name)
        full_name = timm_name if "." in timm_name else f"{timm_name}.{cfg['tag']}" if cfg.get("tag") else timm_name
    else:
        full_name = timm_name
    hub = cfg.get("hf_hub_id")
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    return BackboneInfo(
        name=name,
        family="timm",
        input_size=int(input_size[-1]),
        in_chans=int(input_size[0]),
        channel_order="RGB" if int(input_size[0]) == 3 else "GRAY",
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        pretrained_sources=(f"hf-hub:{hub}",) if hub else (),
        description=description or f"timm {full_name}",
        timm_name=full_name,
        keras_conv_bias=keras_conv_bias,
        random_init=random_init,
        extra=dict(extra or {}),
    )


def create_timm(info: BackboneInfo, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` of ``info``, with the pretrained config and model arguments it carries
    (a Hub repository's) or timm's own."""
    import timm

    return timm.create_model(info.timm_name, num_classes=num_classes, pretrained_cfg=info.extra.get("pretrained_cfg"),
                             **info.extra.get("model_args", {}), **kwargs)


def build_timm(info: BackboneInfo, num_classes: int, weights_file: Path | None,
               options: BackboneOptions | None = None) -> nn.Module:
    """Create the timm model; with a weights file, load it through timm (classifier re-initialised)."""
    if weights_file is None:
        model = create_timm(info, num_classes, pretrained=False)
    else:
        try:
            with _timm_load_log() as log:
                model = create_timm(info, num_classes, pretrained=True,
                                    pretrained_cfg_overlay={"file": str(weights_file), "hf_hub_id": None, "url": None})
        except Exception as err:  # torch's and timm's messages list every key, or advise unpickling code
            raise weights_error(info, num_classes, weights_file, err) from None
        _refuse_partial_load(model, info.name, weights_file, log)
    if (options or BackboneOptions()).resnet_mobilenet_final_relu == "drop" and info.name in FINAL_RELU:
        drop_activation(model, FINAL_RELU[info.name])
    model.feature_channels = model.num_features  # channels of forward_features' maps
    return model


@contextmanager
def _timm_load_log():
    """The messages timm logs while loading pretrained weights (its missing / unexpected keys)."""
    logger = logging.getLogger("timm.models._builder")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _logged_keys(messages: list[str], kind: str) -> list[str]:
    for message in messages:
        match = re.match(rf"{kind} keys \((.*)\) (?:discovered|found) while loading", message)
        if match:
            return [key.strip() for key in match.group(1).split(",") if key.strip()]
    return []


def _refuse_partial_load(model: nn.Module, name: str, weights_file: Path, log: list[str]) -> None:
    """timm loads leniently when the classifier is replaced: a file of another network would leave
    the backbone randomly initialised, with only a log line. Backbone keys missing from the file
    are refused (the classifier, which timm re-initialises on purpose, may be absent)."""
    prefixes = _classifier_prefixes(model)
    missing = [key for key in _logged_keys(log, "Missing") if not (prefixes and key.startswith(prefixes))]
    if missing:
        unexpected = [key for key in _logged_keys(log, "Unexpected") if not (prefixes and key.startswith(prefixes))]
        raise ValueError(describe_mismatch(weights_file, name, missing, unexpected, []))


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return tuple(f"{c}." for c in ((classifiers,) if isinstance(classifiers, str) else classifiers))


def weights_error(info: BackboneInfo, num_classes: int, weights_file: Path, err: Exception) -> ValueError:
    """One line on why timm could not load ``weights_file``: unreadable (a refused pickle, a truncated
    file), or a state_dict of another network (counts and the first mismatch of each kind; timm's
    lenient load reports only the shapes, so the keys are compared here, the classifier aside)."""
    state = load_state_dict_file(weights_file)  # raises the unreadable-file message where that is the problem
    reported = parse_load_error(err)
    if reported is None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        return ValueError(f"{weights_file}: not {info.name} weights ({type(err).__name__}: {first})")
    model = create_timm(info, num_classes, pretrained=False)
    prefixes = _classifier_prefixes(model)

    def backbone_part(tensors: dict) -> dict:
        return {key: value for key, value in tensors.items() if not (prefixes and key.startswith(prefixes))}

    missing, unexpected, shapes = state_dict_mismatch(backbone_part(model.state_dict()), backbone_part(state))
    return ValueError(describe_mismatch(weights_file, info.name, missing or reported[0], unexpected or reported[1],
                                        reported[2] or shapes))


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


def _is_timm_model(model: str) -> bool:
    if ":" in model:  # timm's own sources (hf-hub:, local-dir:) are not timm:<name>; timm:hf-hub: is ferbench.backbones.hf_hub's
        return False
    import timm

    return timm.is_model(model.split(".")[0])


# Any timm model as ``timm:<name>`` (a pretrained tag after a dot is allowed: timm:resnet50.a1_in1k).
register_family(BackboneFamily(TIMM_PREFIX, _is_timm_model, lambda name: (timm_info(name, name[len(TIMM_PREFIX):]), build_timm)))
