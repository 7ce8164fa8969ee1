"""Freezing policies: trainable-parameter counts, the two_stage unfreeze, frozen BatchNorm."""

from __future__ import annotations

import pytest
import torch

from ferbench.backbones import create_backbone
from ferbench.backbones.freezing import FreezePlan, apply_freeze, train_mode, trunk_layers
from ferbench.harness.train.schedules import learning_rate_for_epoch


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return create_backbone("small_cnn", 7)


def test_layers_are_parameterised_leaves_in_forward_order(small_cnn):
    layers = trunk_layers(small_cnn)
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Conv2d", "BatchNorm2d"] * 3 + ["Linear"]
    assert small_cnn.get_classifier() not in layers


def test_policies_trainable_counts(small_cnn):
    head = count(small_cnn.get_classifier())
    layers = trunk_layers(small_cnn)
    apply_freeze(small_cnn, FreezePlan("none"), 1)
    assert trainable(small_cnn) == count(small_cnn)
    apply_freeze(small_cnn, FreezePlan("head_only"), 1)
    assert trainable(small_cnn) == head
    apply_freeze(small_cnn, FreezePlan("last_k", k=2), 1)
    assert trainable(small_cnn) == head + count(*layers[-2:])
    apply_freeze(small_cnn, FreezePlan("last_k", k=100), 1)
    assert trainable(small_cnn) == count(small_cnn)


def test_two_stage_unfreezes_with_a_lower_learning_rate(small_cnn):
    plan = FreezePlan("two_stage", unfreeze_epoch=3, unfreeze_lr_factor=0.1)
    head = count(small_cnn.get_classifier())
    for epoch, expected in [(1, head), (2, head), (3, count(small_cnn)), (5, count(small_cnn))]:
        apply_freeze(small_cnn, plan, epoch)
        assert trainable(small_cnn) == expected, epoch
    assert learning_rate_for_epoch(plan, 1e-3, 2) == 1e-3
    assert learning_rate_for_epoch(plan, 1e-3, 3) == pytest.approx(1e-4)


def test_paper_setting_on_resnet50_trains_the_last_four_layers_and_the_head():
    model = create_backbone("resnet50", 7)
    apply_freeze(model, FreezePlan("last_k", k=4), 1)
    block = model.layer4[2]
    assert trainable(model) == count(model.fc, block.conv2, block.bn2, block.conv3, block.bn3)


def test_frozen_layers_do_not_change_and_frozen_batchnorm_keeps_its_statistics(small_cnn):
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.train.loop import train_one_epoch

    apply_freeze(small_cnn, FreezePlan("head_only"), 1)
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    images = torch.randint(0, 256, (64, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, 7, (64,))
    optimizer = torch.optim.Adam(small_cnn.parameters(), lr=1e-2)
    train_one_epoch(small_cnn, optimizer, images, labels, torch.arange(64), batch_size=16,
                    adapter=InputAdapter(48, 1, "GRAY", (0.5,), (0.5,)), augment=None,
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    after = small_cnn.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # BN running stats included in "unchanged"


def test_train_mode_puts_only_frozen_batchnorm_in_eval(small_cnn):
    apply_freeze(small_cnn, FreezePlan("last_k", k=2), 1)  # trains bn3 and the neck
    train_mode(small_cnn)
    batchnorms = [m for m in trunk_layers(small_cnn) if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.training for m in batchnorms] == [False, False, True]


def test_spec_rejects_an_unknown_policy():
    from ferbench.harness.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="train.freeze.policy"):
        load_spec("quick", ["train.freeze.policy=some"])
    assert load_spec("smelyakov2022").train.freeze == load_spec("smelyakov2022").train.freeze.model_validate(
        {"policy": "keras_last_k", "k": 4}
    )


def test_keras_last_k_counts_keras_layers_where_last_k_counts_modules():
    """ResNet-50: last_k 4 trains the last block's conv2, bn2, conv3, bn3; Keras' last 4 layers after
    excluding conv5_block3_out are 2_relu, 3_conv, 3_bn and add, so only conv3 and bn3 train."""
    model = create_backbone("resnet50", 7)
    block = model.layer4[2]
    apply_freeze(model, FreezePlan("keras_last_k", k=4), 1)
    assert trainable(model) == count(model.fc, block.conv3, block.bn3)
    apply_freeze(model, FreezePlan("keras_last_k", k=7), 1)  # … 2_conv, 2_bn as well
    assert trainable(model) == count(model.fc, block.conv2, block.bn2, block.conv3, block.bn3)
    apply_freeze(model, FreezePlan("last_k", k=4), 1)  # unchanged
    assert trainable(model) == count(model.fc, block.conv2, block.bn2, block.conv3, block.bn3)


def test_keras_last_k_frozen_batchnorm_keeps_its_statistics_and_the_trained_one_learns():
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.train.loop import train_one_epoch

    torch.manual_seed(0)
    model = create_backbone("mobilenet_v1", 7)
    apply_freeze(model, FreezePlan("keras_last_k", k=4), 1)  # conv_dw_13_bn, conv_pw_13, conv_pw_13_bn
    train_mode(model)
    last = model.blocks[4][1]
    assert [last.bn1.training, last.bn2.training, model.blocks[4][0].bn2.training, model.bn1.training] == [True, True, False, False]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_one_epoch(model, optimizer, torch.randint(0, 256, (8, 32, 32), dtype=torch.uint8), torch.randint(0, 7, (8,)),
                    torch.arange(8), batch_size=8, adapter=InputAdapter(32, 3, "RGB", (0.5,) * 3, (0.5,) * 3), augment=None,
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    changed = {k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"blocks.4.1.bn1", "blocks.4.1.conv_pw", "blocks.4.1.bn2", "classifier"}
