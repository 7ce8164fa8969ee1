"""The Moravčík thesis's two CNNs (Tables 5.1 and 5.2): their parameter counts from the tables' layer
shapes, computed here by hand, and their forward pass at the thesis's 48×48 grayscale input."""

from __future__ import annotations

import pytest
import torch

from ferbench.backbones import BackboneOptions, backbone_parameter_counts, create_backbone, get_backbone_info


def conv(c_in: int, c_out: int) -> int:
    return 3 * 3 * c_in * c_out + c_out  # a 3×3 kernel per input and output channel, and a bias


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def batch_norm(channels: int) -> tuple[int, int]:
    return 2 * channels, 2 * channels  # (γ and β, which train; the moving mean and variance Keras counts too)


def base_params() -> int:
    """Table 5.1: conv 64, pool, conv 128, pool, conv 160, pool (48 → 6), flatten, Dense 160."""
    return conv(1, 64) + conv(64, 128) + conv(128, 160) + dense(6 * 6 * 160, 160)


def final_params(blocks: int) -> tuple[int, int]:
    """Table 5.2 with ``blocks`` of [conv, BN, conv, BN, pool, dropout], flatten, Dense 256, BN."""
    widths = [64, 128, 256, 256][:blocks]
    params = moving = 0
    c_in = 1
    for width in widths:
        params += conv(c_in, width) + conv(width, width)
        trains, stats = batch_norm(width)
        params, moving = params + 2 * trains, moving + 2 * stats
        c_in = width
    side = 48 // 2 ** blocks
    trains, stats = batch_norm(256)
    return params + dense(side * side * c_in, 256) + trains, moving + stats


def test_the_base_cnn_has_table_5_1s_parameters():
    counts = backbone_parameter_counts("moravcik_base")
    assert counts == {"params": base_params(), "keras_params": base_params()} and base_params() == 1_180_736


@pytest.mark.parametrize("blocks", [4, 3, 2])
def test_the_final_cnn_has_table_5_2s_parameters_for_each_number_of_blocks(blocks):
    params, moving = final_params(blocks)
    counts = backbone_parameter_counts("moravcik_final", options=BackboneOptions(moravcik_blocks=blocks))
    assert counts == {"params": params, "keras_params": params + moving}


def test_both_take_48_by_48_gray_faces_and_end_in_one_logit_per_class():
    for name, options in (("moravcik_base", None), ("moravcik_final", BackboneOptions(moravcik_blocks=3))):
        info = get_backbone_info(name)
        assert (info.input_size, info.in_chans, info.fixed_input_size, info.mean, info.std) == (48, 1, True, (0.0,), (1.0,))
        model = create_backbone(name, 7, options=options).eval()
        assert model(torch.rand(2, 1, 48, 48)).shape == (2, 7)
        assert model.get_classifier().out_features == 7
    base = create_backbone("moravcik_base", 7)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in base.modules())  # no regularisation


def test_the_final_cnns_blocks_follow_the_spec_and_are_checked():
    from ferbench.harness.spec import SpecError, load_spec

    spec = load_spec("quick", ["model.moravcik_blocks=2"])
    assert spec.model.backbone_options().moravcik_blocks == 2
    with pytest.raises(SpecError, match="model.moravcik_blocks"):
        load_spec("quick", ["model.moravcik_blocks=5"])
