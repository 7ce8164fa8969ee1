"""The papers' heads on every backbone: output shapes, structure, no dead parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.backbones.freezing import FreezePlan, apply_freeze

SIZES = {"small_cnn": 48, "mobilenet_v1": 48, "resnet50": 64, "vggface": 64, "openface": 96}


@pytest.mark.parametrize("head", ["linear", "arsirii_pl", "arsirii_au"])
@pytest.mark.parametrize("name", list(SIZES))
def test_every_head_on_every_backbone(name, head):
    torch.manual_seed(0)
    model = create_backbone(name, 5, head=head)
    channels = get_backbone_info(name).in_chans
    logits = model(torch.rand(3, channels, SIZES[name], SIZES[name]))
    assert logits.shape == (3, 5)
    logits.sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert dead == []  # nothing counted as a layer that never runs


def test_arsirii_pseudo_label_head_structure():
    head = create_backbone("mobilenet_v1", 7, head="arsirii_pl").get_classifier()
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1024, 64, (5, 5)), (64, 128, (5, 5)), (128, 256, (3, 3))
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in head.modules()) == 3
    assert [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)] == [(256, 128), (128, 7)]
    with torch.no_grad():  # 7×7 maps at 224 px pool down to 1×1
        model = create_backbone("mobilenet_v1", 7, head="arsirii_pl").eval()
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_arsirii_au_head_structure():
    head = create_backbone("resnet50", 8, head="arsirii_au").get_classifier()
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["AdaptiveAvgPool2d", "Flatten", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert head[2].num_features == 2048 and head[4].p == 0.2 and head[5].out_features == 8


def test_head_only_trains_exactly_the_chosen_head():
    model = create_backbone("small_cnn", 7, head="arsirii_pl")
    apply_freeze(model, FreezePlan("head_only"), 1)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.get_classifier().parameters())


def test_unknown_head_is_refused_by_the_spec():
    from ferbench.harness.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="train.head"):
        load_spec("quick", ["train.head=mlp"])
