"""Large frames (video, full-size photographs) decoded a few at a time and reduced at once.

DISFA alone is 130,815 frames of 1024×768 RGB (300 GB as raw pixels), so frames are never held at
full size: every chunk of ``FRAME_CHUNK`` becomes face crops (``data.face_detect``) or central
squares of ``data.frame_size`` before the next one is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ferbench.harness.data.formats.common import DataError
from ferbench.harness.data.formats.images import _decode, _to_mode

FRAME_CHUNK = 64  # full-size frames held at once: 64 × 1024×768×3 bytes = 150 MB
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".wmv")

# A chunk of RGB frames → (the kept frames reduced and stacked, the chunk indices dropped for want of a face).
Reduce = Callable[[list[np.ndarray]], tuple[np.ndarray, list[int]]]


def central_square(frame: np.ndarray, size: int) -> np.ndarray:
    """The central square of ``frame`` (its shorter side) resized to ``size``×``size``: a frontal
    recording has the face in the middle, and a square keeps its proportions."""
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(frame[top : top + side, left : left + side], (size, size), interpolation=interpolation)


def reduced_side(spec) -> int:
    """The side of every reduced frame: ``data.face_size`` with face detection, else ``data.frame_size``."""
    return spec.face_size if spec.face_detect else spec.frame_size


def reducer(spec) -> Reduce:
    """How ``spec`` reduces a chunk of frames: the largest face cropped, or the central square."""
    if spec.face_detect:
        from ferbench.harness.data.face_detect import crop_faces

        return lambda frames: crop_faces(frames, spec.face_size)
    return lambda frames: (np.stack([central_square(frame, spec.frame_size) for frame in frames]), [])


def video_frames(path: Path, wanted: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray | None]]:
    """(frame number from 1, RGB frame) for every frame of the video, decoded in order; the frame is
    None where ``wanted`` declines it (only demuxed: cheaper than decoding and converting)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: OpenCV cannot open this video; re-copy it, or extract its frames to images")
    try:
        number = 0
        while True:
            number += 1
            if not wanted(number):
                if not capture.grab():
                    return
                yield number, None
                continue
            ok, frame = capture.read()
            if not ok:
                return
            yield number, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def _rgb(path: str) -> np.ndarray | str:
    image = _decode(path)
    return image if isinstance(image, str) else _to_mode(image, rgb=True)


def image_frames(paths: list[Path]) -> Iterator[np.ndarray | str]:
    """Each file decoded as RGB (or why it cannot be read), in order, ``FRAME_CHUNK`` at a time on
    threads: Pillow releases the GIL while it decodes a large image."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), FRAME_CHUNK):
            yield from pool.map(_rgb, [str(path) for path in paths[start : start + FRAME_CHUNK]])
