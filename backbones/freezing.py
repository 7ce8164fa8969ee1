"""Freezing policies: which parameters train, epoch by epoch.

A *layer* is a leaf module that owns parameters (a convolution, a linear layer, a BatchNorm),
in registration order, which for every built-in backbone is the order of the forward pass.
The classifier (``model.get_classifier()``) is the head; it always trains. Policies:

- ``none``: everything trains (full fine-tuning).
- ``last_k``: the head and the last ``k`` trunk layers train, the rest is frozen. Smelyakov et al.
  froze "all layers except the last 4" of each network; ``k = 4``.
- ``keras_last_k``: the paper's reading with Keras' layer counting: every Keras layer counts
  (padding, activation, pooling, dropout, flatten, add, concatenate, lambda too), the Keras
  model's last layer is excluded, and the PyTorch modules the last ``k`` of the remaining layers
  map to train, with the head (``ferbench.backbones.keras_layers`` holds the recorded lists; backbones
  without one are refused).
- ``head_only``: only the head trains. Under ``train.head=linear`` that is the output layer alone, every hidden
  dense layer frozen with the convolutions: the Moravčík thesis's "retrain only the output layer" (its 84% on CK+).
- ``fc_only``: the fully connected layers train (the neck's hidden dense layers and the output layer), the
  convolutional layers stay frozen: the thesis's "preserving only convolutional layers" (its 95% on CK+). Which
  modules are which is ``ferbench.backbones.conv_fc``'s definition; backbones without the split are refused.
  The thesis also replaces those layers by new, randomly initialised ones: ``reinit_fc``, applied once where the
  trial builds the model (``ferbench.harness.train.trial``), not here.
- ``two_stage``: ``head_only`` until ``unfreeze_epoch``, then everything trains (the Arsirii papers'
  transfer schedule; its learning-rate drop is ``ferbench.harness.train.schedules``).

Frozen BatchNorm layers run in inference mode (their moving statistics stay as loaded), as
Keras' frozen layers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ferbench.backbones.conv_fc import require_fc_layers


@dataclass(frozen=True)
class FreezePlan:
    policy: str = "none"  # none | last_k | keras_last_k | head_only | fc_only | two_stage
    k: int = 4
    unfreeze_epoch: int = 1
    unfreeze_lr_factor: float = 0.1
    unfreeze_k: int | None = None  # two_stage's fine-tuning: the last k trunk layers train, or None: all
    reinit_fc: bool = False  # the fully connected layers re-drawn when the model is built (not a freezing step)


def trunk_layers(model: nn.Module) -> list[nn.Module]:
    """The trunk's layers in order: leaf modules with parameters of their own, head excluded."""
    head = set(model.get_classifier().modules())
    return [
        module for module in model.modules()
        if module not in head and not list(module.children()) and list(module.parameters(recurse=False))
    ]


def _set_trainable(model: nn.Module, trainable_trunk_layers: int | None) -> None:
    """Trunk layers beyond the last ``trainable_trunk_layers`` are frozen (None: all train)."""
    layers = trunk_layers(model)
    frozen = 0 if trainable_trunk_layers is None else max(0, len(layers) - trainable_trunk_layers)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for layer in layers[:frozen]:
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(False)


def keras_trainable_modules(model: nn.Module, k: int) -> list[nn.Module]:
    """The modules the last ``k`` Keras layers (after excluding the last one) map to."""
    from ferbench.backbones.keras_layers import RECORDED_BACKBONES

    layers = getattr(model, "keras_layers", None)
    if layers is None:
        raise ValueError(
            "train.freeze.policy=keras_last_k counts the layers of a recorded Keras model, and this backbone has none "
            f"(recorded: {', '.join(RECORDED_BACKBONES)}, with train.head=linear); use last_k for it"
        )
    return [model.get_submodule(path) for path in layers.torch_modules(k)]


def _train_only(model: nn.Module, modules: list[nn.Module]) -> None:
    """Freeze everything but ``modules`` and the head."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in [*modules, model.get_classifier()]:
        for parameter in module.parameters():
            parameter.requires_grad_(True)


def apply_freeze(model: nn.Module, plan: FreezePlan, epoch: int) -> None:
    """Set ``requires_grad`` for training ``epoch`` (1-based) under ``plan``."""
    if plan.policy == "none":
        _set_trainable(model, None)
    elif plan.policy == "two_stage" and epoch >= plan.unfreeze_epoch:
        _set_trainable(model, plan.unfreeze_k)
    elif plan.policy == "last_k":
        _set_trainable(model, plan.k)
    elif plan.policy == "keras_last_k":
        _train_only(model, keras_trainable_modules(model, plan.k))
    elif plan.policy == "fc_only":
        _train_only(model, require_fc_layers(model, "train.freeze.policy=fc_only"))
    elif plan.policy in ("head_only", "two_stage"):
        _set_trainable(model, 0)
    else:
        raise ValueError(f"unknown freezing policy {plan.policy!r}; allowed: none, last_k, keras_last_k, head_only, fc_only, two_stage")


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except frozen BatchNorm layers, which keep using their moving statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
