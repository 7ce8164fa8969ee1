"""Image files to the tensor an arm's test step fed its model, for ``ferbench predict``.

A trial never saw image files: it saw the dataset's uint8 array, which the loader made by decoding each
file into the dataset's colour mode (``ferbench.harness.data.formats.images``), cropping the face where
``data.face_detect`` was on (``ferbench.harness.data.face_detect``) and bringing every image to one size
(PIL bilinear); the trial's ``InputAdapter`` then resized that to the backbone's input, matched the
channels and normalised. Reading a new image through the same helpers, in the same order, gives the
model what it was tested on: a dataset image written to a PNG comes back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ferbench.harness.data.formats.images import _to_mode, decode_files
from ferbench.harness.train.augment import InputAdapter


class ImageError(ValueError):
    """An image cannot be used; ``str()`` is one line naming the file and the fix."""


@dataclass(frozen=True)
class Preprocessing:
    """How an arm's images were prepared: the dataset's stored form, then the backbone's input."""

    image_size: tuple[int, int]  # (height, width) of the dataset's stored images
    grayscale: bool  # the dataset's colour mode (one channel), else RGB
    face_detect: bool  # the training images were face crops (data.face_detect)
    face_size: int  # data.face_size
    input_size: int  # the side the trial resized images to (train.input_size resolved)
    in_chans: int
    channel_order: str  # "RGB", "BGR" or "GRAY"
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def adapter(self) -> InputAdapter:
        """The trial's own input step (resize, channels, normalisation)."""
        return InputAdapter(self.input_size, self.in_chans, self.channel_order, self.mean, self.std)

    def channel_step(self) -> str:
        """What ``InputAdapter`` does to the dataset's channels for this backbone, in words."""
        channels = 1 if self.grayscale else 3
        if channels == self.in_chans:
            return "RGB reversed to BGR" if self.channel_order == "BGR" and channels == 3 else "channels kept as they are"
        if channels == 1:
            return f"grayscale repeated to {self.in_chans} channels"
        return "RGB to grayscale (ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B)"

    def steps(self) -> list[str]:
        """The preprocessing in order, for config.json's readers (who reimplement it in another language)."""
        height, width = self.image_size
        mode = "grayscale" if self.grayscale else "RGB"
        return [
            f"decode the image file (PNG, JPEG, BMP, ...) to 8-bit {mode}",
            *([f"crop the largest face ({self.face_size}x{self.face_size}, OpenCV Haar cascade, eye-aligned)"]
              if self.face_detect else []),
            f"resize to {width}x{height} (PIL bilinear), the size the dataset's images were stored at",
            "scale to floats: pixel / 255",
            self.channel_step(),
            f"resize to {self.input_size}x{self.input_size} (bilinear, align_corners=False, no antialias)",
            f"normalise per channel: (x - mean) / std with mean {list(self.mean)}, std {list(self.std)}",
            f"layout NCHW float32: batch x {self.in_chans} x {self.input_size} x {self.input_size}",
        ]

    def to_config(self) -> dict:
        """The ``images`` and ``input`` sections of config.json."""
        return {
            "images": {"size": list(self.image_size), "mode": "grayscale" if self.grayscale else "rgb",
                       "face_detect": self.face_detect, "face_size": self.face_size},
            "input": {"size": self.input_size, "channels": self.in_chans, "channel_order": self.channel_order,
                      "mean": list(self.mean), "std": list(self.std), "layout": "NCHW", "dtype": "float32",
                      "channel_handling": self.channel_step()},
            "preprocessing": self.steps(),
        }

    @classmethod
    def from_config(cls, config: dict) -> "Preprocessing":
        images, model_input = config["images"], config["input"]
        return cls(
            image_size=(int(images["size"][0]), int(images["size"][1])), grayscale=images["mode"] == "grayscale",
            face_detect=bool(images["face_detect"]), face_size=int(images["face_size"]),
            input_size=int(model_input["size"]), in_chans=int(model_input["channels"]),
            channel_order=str(model_input["channel_order"]), mean=tuple(model_input["mean"]), std=tuple(model_input["std"]),
        )


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at (height, width) ``size``, as the loader brings a dataset to one size (PIL bilinear)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def read_images(paths: list[Path], preprocessing: Preprocessing, face_detect: bool = False) -> np.ndarray:
    """The files as the dataset stored its images: uint8 (N, H, W) or (N, H, W, 3). ``face_detect`` crops
    the largest face first (``ferbench.harness.data.face_detect``, as ``data.face_detect`` does). An
    unreadable file, or one without a face, is an ``ImageError`` naming it."""
    decoded = decode_files([str(path) for path in paths])
    failed = [(path, reason) for path, reason in zip(paths, decoded) if isinstance(reason, str)]
    if failed:
        path, reason = failed[0]
        more = f" (and {len(failed) - 1} more unreadable files)" if len(failed) > 1 else ""
        raise ImageError(f"{path}: unreadable image ({reason}){more}; pass PNG, JPEG or BMP files")
    images = [_to_mode(image, rgb=not preprocessing.grayscale) for image in decoded]
    if face_detect:
        from ferbench.harness.data.face_detect import crop_faces

        crops, missed = crop_faces(images, preprocessing.image_size[0])
        if missed:
            more = f" (and {len(missed) - 1} more)" if len(missed) > 1 else ""
            raise ImageError(f"{paths[missed[0]]}: no face found{more}; leave out --face-detect for images that are already face crops")
        images = list(crops)
    return np.stack([_resized(image, preprocessing.image_size) for image in images])


def model_input(images: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """The float32 NCHW batch the model takes: the trial's ``InputAdapter`` applied to the stored form."""
    with torch.no_grad():
        return preprocessing.adapter()(torch.from_numpy(np.ascontiguousarray(images))).contiguous()
