"""``train.random_init: keras``: glorot-uniform kernels with Keras' fans, zero biases, BatchNorm 1/0."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ferbench.backbones import create_backbone
from ferbench.backbones.keras_init import apply_keras_init, glorot_limit, keras_fans


def test_fans_follow_keras_kernel_shapes_not_pytorchs():
    assert keras_fans(nn.Conv2d(3, 64, 3)) == (27, 576)  # (3, 3, 3, 64)
    assert keras_fans(nn.Conv2d(32, 32, 3, groups=32)) == (288, 9)  # DepthwiseConv2D (3, 3, 32, 1)
    assert keras_fans(nn.Conv2d(16, 32, 3, groups=16)) == (144, 18)  # depth multiplier 2: (3, 3, 16, 2)
    assert keras_fans(nn.Conv2d(8, 16, 1, groups=2)) == (4, 16)  # grouped: (1, 1, 4, 16)
    assert keras_fans(nn.Linear(10, 5)) == (10, 5)
    assert glorot_limit(nn.Linear(10, 5)) == pytest.approx(math.sqrt(6 / 15))
    with pytest.raises(TypeError):
        keras_fans(nn.BatchNorm2d(4))


def _check_glorot(module: nn.Module, name: str) -> None:
    limit = glorot_limit(module)
    weight = module.weight.detach()
    assert weight.abs().max().item() <= limit * (1 + 1e-6), name  # float32 rounding
    if weight.numel() >= 10_000:  # uniform(−l, l): reaches the bounds, std l/√3, mean 0
        assert weight.abs().max().item() > 0.99 * limit, name
        assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.03), name
        assert abs(weight.mean().item()) < 0.02 * limit, name
    if module.bias is not None:
        assert torch.all(module.bias == 0), name


@pytest.mark.parametrize("name", ["mobilenet_v1", "resnet50", "openface"])
def test_every_layer_is_drawn_as_keras_draws_it(name):
    torch.manual_seed(0)
    model = create_backbone(name, 7, random_init="keras")
    kernels = 0
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            _check_glorot(module, path)
            kernels += 1
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), path  # no zero-init of the last BN
            assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1), path
    assert kernels > 20
    _check_glorot(model.get_classifier(), "head")


def test_depthwise_kernels_use_the_depthwise_fans():
    torch.manual_seed(1)
    model = create_backbone("mobilenet_v1", 7, random_init="keras")
    conv_dw = model.blocks[4][1].conv_dw  # 1024 channels, 3×3: Keras fans (9216, 9), PyTorch's would be (9, 9216)
    limit = math.sqrt(6 / (9 * 1024 + 9))
    assert glorot_limit(conv_dw) == pytest.approx(limit)
    assert 0.99 * limit < conv_dw.weight.abs().max().item() <= limit * (1 + 1e-6)
    assert conv_dw.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.03)


def test_keras_init_is_reproducible_from_the_seed_and_differs_from_torchs():
    states = []
    for seed, scheme in ((3, "keras"), (3, "keras"), (4, "keras"), (3, "torch")):
        torch.manual_seed(seed)
        states.append(create_backbone("small_cnn", 7, random_init=scheme).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["features.0.weight"], states[2]["features.0.weight"])
    assert not torch.equal(states[0]["features.0.weight"], states[3]["features.0.weight"])


def test_pretrained_arms_keep_their_weights_and_get_a_keras_head(tmp_path):
    torch.manual_seed(0)
    source = create_backbone("small_cnn", 7)
    path = tmp_path / "small_cnn.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    model = create_backbone("small_cnn", 7, weights_file=path, random_init="keras")
    head = model.get_classifier()
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.all(head.bias == 0) and head.weight.abs().max().item() <= glorot_limit(head) * (1 + 1e-6)


def test_unknown_random_init_is_refused():
    with pytest.raises(ValueError, match="unknown random_init 'he'; allowed: torch, keras"):
        create_backbone("small_cnn", 7, random_init="he")


def test_apply_keras_init_resets_batchnorm_statistics():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(3.0)
    bn.weight.data.fill_(0.0)
    apply_keras_init(nn.Sequential(bn))
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1) and torch.all(bn.weight == 1)
