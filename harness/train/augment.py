"""Batched input pipeline on the training device: uint8 batch → augmented, resized, normalised floats.

One ``affine_grid``/``grid_sample`` call applies flip, rotation, zoom, translation and shear
to a whole batch (the Keras ``RandomFlip/RandomRotation/RandomZoom/RandomTranslation`` the
papers used), then one ``interpolate`` resizes to the backbone's input. No per-sample Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class InputAdapter:
    """Turns uint8 images (B,H,W) or (B,H,W,C) into the tensor a backbone expects."""

    size: int
    in_chans: int
    channel_order: str  # "RGB", "BGR" or "GRAY"
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = self._match_channels(x)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def _match_channels(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.in_chans:
            return x.flip(1) if self.channel_order == "BGR" and channels == 3 else x
        if channels == 1:
            return x.expand(-1, self.in_chans, -1, -1)
        if self.in_chans == 1:  # ITU-R 601 luma from RGB
            weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            return (x * weights).sum(1, keepdim=True)
        raise ValueError(f"cannot feed {channels}-channel images to a {self.in_chans}-channel backbone")


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    hflip: bool,
    rotation_deg: float,
    zoom: float,
    translate: float,
    shear_deg: float,
) -> torch.Tensor:
    """Apply an independent random affine transform to every image of a (B,C,H,W) float batch.

    Random numbers come from ``generator`` so a seeded trial draws the same augmentations on a
    rerun; a CPU generator may drive a batch on the GPU (the few per-image parameters are drawn on
    the generator's device, the warp runs on ``x``'s). Out-of-image pixels are filled by
    reflection, as Keras does.
    """
    batch = x.shape[0]
    device, dtype = generator.device, torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device, dtype=dtype) * (high - low) + low

    angle = uniform(-rotation_deg, rotation_deg) * (math.pi / 180)
    scale = uniform(1 - zoom, 1 + zoom)
    shear = uniform(-shear_deg, shear_deg) * (math.pi / 180)
    shift_x, shift_y = uniform(-translate, translate) * 2, uniform(-translate, translate) * 2
    flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0).to(dtype) if hflip else torch.ones(batch, device=device, dtype=dtype)

    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output→input sampling matrix: rotate, shear along x, scale (zoom in when scale > 1), flip.
    a = (cos * flip) / scale
    b = (-sin + torch.tan(shear) * cos) / scale
    c = (sin * flip) / scale
    d = (cos + torch.tan(shear) * sin) / scale
    theta = torch.stack(
        [torch.stack([a, b, shift_x], dim=1), torch.stack([c, d, shift_y], dim=1)], dim=1
    )
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
