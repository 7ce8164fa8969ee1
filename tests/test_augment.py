"""Batched augmentation (``random_affine``) and the uint8 → backbone input adapter."""

from __future__ import annotations

import pytest
import torch

from ferbench.harness.train.augment import InputAdapter, random_affine

NO_AUGMENT = dict(hflip=False, rotation_deg=0.0, zoom=0.0, translate=0.0, shear_deg=0.0)
PAPER_AUGMENT = dict(hflip=True, rotation_deg=10.0, zoom=0.1, translate=0.1, shear_deg=5.0)


def batch(n: int = 8, channels: int = 1, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Random, asymmetric images (a flip or rotation always changes them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_ranges_are_the_identity():
    x = batch(channels=3)
    out = random_affine(x, gen(0), **NO_AUGMENT)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


def test_hflip_flips_about_half_the_images_exactly():
    x = batch(n=200)
    out = random_affine(x, gen(1), **{**NO_AUGMENT, "hflip": True})
    flipped = x.flip(-1)
    is_same = (out - x).abs().flatten(1).amax(1) < 1e-5
    is_flipped = (out - flipped).abs().flatten(1).amax(1) < 1e-5
    assert torch.all(is_same ^ is_flipped), "every image is either untouched or mirrored, exactly"
    assert 60 <= int(is_flipped.sum()) <= 140  # Binomial(200, 0.5): ±5.6 standard deviations


def test_same_seed_same_output_other_seed_other_output():
    x = batch()
    first = random_affine(x, gen(7), **PAPER_AUGMENT)
    again = random_affine(x, gen(7), **PAPER_AUGMENT)
    other = random_affine(x, gen(8), **PAPER_AUGMENT)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, x)


def test_images_of_a_batch_get_independent_transforms():
    x = batch(n=4)[:1].repeat(4, 1, 1, 1)  # four copies of one image
    out = random_affine(x, gen(3), **{**NO_AUGMENT, "rotation_deg": 30.0})
    assert not torch.allclose(out[0], out[1])


def test_rotation_moves_content_but_keeps_shape():
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 4:12, 14:18] = 1.0  # a bar near the top
    out = random_affine(x, gen(0), **{**NO_AUGMENT, "rotation_deg": 90.0})
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6  # bilinear sampling stays in range


def test_out_of_image_pixels_are_reflected_not_black():
    x = torch.full((4, 1, 16, 16), 0.8)
    out = random_affine(x, gen(0), **{**NO_AUGMENT, "translate": 0.3, "zoom": 0.5, "rotation_deg": 45.0})
    assert torch.allclose(out, x, atol=1e-5)  # a constant image stays constant everywhere


# --- InputAdapter ---------------------------------------------------------------------------------


def test_gray_uint8_to_normalised_three_channels():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    adapter = InputAdapter(size=32, in_chans=3, channel_order="RGB", mean=mean, std=std)
    images = torch.full((2, 48, 48), 200, dtype=torch.uint8)
    out = adapter(images)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    for c in range(3):
        expected = (200 / 255 - mean[c]) / std[c]
        assert torch.allclose(out[:, c], torch.full((2, 32, 32), expected), atol=1e-5)


def test_gray_uint8_to_one_channel_same_size_is_pure_normalisation():
    adapter = InputAdapter(size=48, in_chans=1, channel_order="GRAY", mean=(0.5,), std=(0.5,))
    images = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    out = adapter(images)
    assert out.shape == (3, 1, 48, 48)
    assert torch.allclose(out[:, 0], (images.float() / 255 - 0.5) / 0.5, atol=1e-6)


def test_rgb_to_one_channel_uses_luma():
    adapter = InputAdapter(size=8, in_chans=1, channel_order="GRAY", mean=(0.0,), std=(1.0,))
    images = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
    images[0, ..., 0] = 255  # red
    images[1, ..., 1] = 255  # green
    images[2, ..., 2] = 255  # blue
    out = adapter(images)
    assert out.shape == (3, 1, 8, 8)
    for i, weight in enumerate((0.299, 0.587, 0.114)):
        assert torch.allclose(out[i], torch.full((1, 8, 8), weight), atol=1e-6)


def test_bgr_backbone_gets_channels_reversed():
    rgb = InputAdapter(size=8, in_chans=3, channel_order="RGB", mean=(0.0,) * 3, std=(1.0,) * 3)
    bgr = InputAdapter(size=8, in_chans=3, channel_order="BGR", mean=(0.0,) * 3, std=(1.0,) * 3)
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    assert torch.allclose(rgb(images), images.permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(bgr(images), rgb(images).flip(1))
    red = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    red[..., 0] = 255
    assert torch.allclose(bgr(red)[0, 2], torch.ones(8, 8)) and bgr(red)[0, :2].abs().max() == 0


def test_resize_up_and_down():
    adapter_up = InputAdapter(size=96, in_chans=1, channel_order="GRAY", mean=(0.0,), std=(1.0,))
    adapter_down = InputAdapter(size=24, in_chans=1, channel_order="GRAY", mean=(0.0,), std=(1.0,))
    images = torch.zeros(2, 48, 48, dtype=torch.uint8)
    images[:, :, 24:] = 255  # left half black, right half white
    up, down = adapter_up(images), adapter_down(images)
    assert up.shape == (2, 1, 96, 96) and down.shape == (2, 1, 24, 24)
    assert up[..., :40].max() == 0 and torch.allclose(up[..., 56:], torch.ones(1))
    assert down[..., :11].max() == 0 and torch.allclose(down[..., 13:], torch.ones(1))


def test_input_tensor_is_not_modified():
    adapter = InputAdapter(size=16, in_chans=1, channel_order="GRAY", mean=(0.5,), std=(0.5,))
    images = torch.randint(0, 256, (2, 16, 16), dtype=torch.uint8)
    before = images.clone()
    adapter(images)
    assert torch.equal(images, before)


def test_incompatible_channels_are_rejected():
    adapter = InputAdapter(size=8, in_chans=3, channel_order="RGB", mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(ValueError, match="2-channel"):
        adapter(torch.zeros(1, 8, 8, 2, dtype=torch.uint8))
