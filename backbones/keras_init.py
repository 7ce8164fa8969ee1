"""Keras' default initialisers on PyTorch modules: what the Smelyakov study's random arms drew.

The paper's networks were Keras models, whose layers default to glorot-uniform kernels (limit
√(6 / (fan_in + fan_out))), zero biases and BatchNorm γ = 1, β = 0, moving mean 0, variance 1.
PyTorch's defaults differ (Kaiming-uniform ±1/√fan_in, non-zero biases), and so does its fan
arithmetic, so the fans are computed from the Keras kernel shape each PyTorch weight stands for:
a convolution's (kh, kw, in/groups, out) gives fan_in = kh·kw·in/groups, fan_out = kh·kw·out; a
depthwise one's (kh, kw, in, multiplier) gives fan_in = kh·kw·in, fan_out = kh·kw·multiplier; a
Dense kernel's (in, out) gives in and out. Values come from torch's global RNG, so seeding torch
first reproduces them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def keras_fans(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) Keras computes for the kernel of the layer ``module`` corresponds to."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        receptive = math.prod(module.kernel_size)
        if module.groups > 1 and module.groups == module.in_channels:  # Keras' DepthwiseConv2D
            return receptive * module.in_channels, receptive * (module.out_channels // module.in_channels)
        return receptive * module.in_channels // module.groups, receptive * module.out_channels
    raise TypeError(f"{type(module).__name__} has no Keras kernel")


def glorot_limit(module: nn.Module) -> float:
    fan_in, fan_out = keras_fans(module)
    return math.sqrt(6.0 / (fan_in + fan_out))


@torch.no_grad()
def apply_keras_init(model: nn.Module) -> nn.Module:
    """Re-draw every convolution, linear and normalisation layer of ``model`` as Keras would.

    Other parameters (e.g. a transformer's position embeddings) keep their own initialiser.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            limit = glorot_limit(module)
            module.weight.uniform_(-limit, limit)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, NORM_LAYERS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.reset_running_stats()
    return model
