"""FERBench backbones: registry, builders and pretrained-weight resolution."""

from ferbench.backbones import face_backbones, hf_hub, moravcik, small_cnn, timm_backbones  # noqa: F401  (registers the built-in backbones and families)
from ferbench.backbones.registry import (
    BackboneInfo,
    BackboneOptions,
    backbone_parameter_counts,
    count_parameters,
    create_backbone,
    get_backbone_info,
    is_known_backbone,
    list_backbones,
    meta_backbone,
    register_backbone,
)
from ferbench.backbones.weights import WeightStatus, resolve_pretrained

__all__ = [
    "BackboneInfo",
    "BackboneOptions",
    "WeightStatus",
    "backbone_parameter_counts",
    "count_parameters",
    "create_backbone",
    "get_backbone_info",
    "is_known_backbone",
    "list_backbones",
    "meta_backbone",
    "register_backbone",
    "resolve_pretrained",
]
