"""Optional face detection and eye alignment for raw photographs (Smelyakov et al., step 1).

FER backbones expect a face that fills the frame; raw photographs carry background, so the
loaders can crop them first. The detector is OpenCV's Haar cascade, the one deepface's
``opencv`` backend uses, because it runs offline and on CPU. Face detection mirrors deepface's
parameters (``scaleFactor=1.1``, ``minNeighbors=10``) and adds a ``minSize`` of ``min_face``
pixels. Eyes are searched like deepface (largest two) but with ``minNeighbors=5``: the checks
below reject implausible pairs, and 10 finds a pair in a third of upright CK+ faces only.

Per image: the largest face box is kept, expanded by ``margin`` of its size on each side into a
square around the box centre (the square shrinks, keeping its centre, where the image ends).
When the eye cascade finds two eyes in the band 0.2-0.6 of the face height, one on each side
of its centre line, and the eye line is tilted by at most ``MAX_TILT_DEG``, the square is cut out
rotated about the face centre so that the eye line becomes horizontal (pixels beyond the image
repeat the border); otherwise it is cut out unrotated. The cut is resized to size x size.

OpenCV >= 5 wheels ship no cascade files (and deepface downloads them), so FERBench ships the two
it needs in ``harness/cascades/``; ``$FERBENCH_HAARCASCADES`` may point at others.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
MAX_TILT_DEG = 20.0  # the frontal cascade hardly fires beyond ~15 deg, so more is a bad eye pair

BUNDLED_CASCADES = Path(__file__).parent / "cascades"
_local = threading.local()


def cascade_dirs() -> list[Path]:
    """Folders searched for the cascade XML files, in order: ``$FERBENCH_HAARCASCADES``, then the
    copies shipped with FERBench (OpenCV's own, Intel License Agreement in each file's header)."""
    dirs = [os.environ.get("FERBENCH_HAARCASCADES", ""), str(BUNDLED_CASCADES)]
    return [Path(d) for d in dirs if d]


@lru_cache(maxsize=None)
def cascade_path(name: str) -> Path:
    """The first existing ``name`` in ``cascade_dirs()``; RuntimeError naming the paths tried."""
    tried = [d / name for d in cascade_dirs()]
    for path in tried:
        if path.is_file():
            return path
    raise RuntimeError(
        f"OpenCV Haar cascade {name} not found; tried: {', '.join(map(str, tried))}. "
        f"reinstall FERBench (its copies live in {BUNDLED_CASCADES}) or put the file in a folder named by "
        "$FERBENCH_HAARCASCADES."
    )


def _cascade(name: str) -> cv2.CascadeClassifier:
    """One classifier per thread and file: detectMultiScale is not safe to share across threads."""
    cache = _local.__dict__.setdefault("cascades", {})
    if name not in cache:
        path = cascade_path(name)
        classifier = cv2.CascadeClassifier(str(path))
        if classifier.empty():
            raise RuntimeError(f"OpenCV could not load the Haar cascade {path}")
        cache[name] = classifier
    return cache[name]


def eye_tilt(gray: np.ndarray, box: tuple[int, int, int, int]) -> float | None:
    """Angle (degrees, image axes: positive = the eye on the right sits lower) of the line through
    the two eyes in a face ``box``, or None when no plausible pair is found."""
    x, y, w, h = box
    band = gray[y + h // 5 : y + h * 3 // 5, x : x + w]  # eyes sit at ~0.4 h in a Haar face box
    eyes = _cascade(EYE_CASCADE).detectMultiScale(band, 1.1, 5)
    if len(eyes) < 2:
        return None
    (ax, ay, aw, ah), (bx, by, bw, bh) = sorted(eyes, key=lambda e: e[2] * e[3], reverse=True)[:2]
    (lx, ly), (rx, ry) = sorted([(ax + aw / 2, ay + ah / 2), (bx + bw / 2, by + bh / 2)])
    if not lx < w / 2 < rx:  # one eye on each side of the face's centre line
        return None
    tilt = math.degrees(math.atan2(ry - ly, rx - lx))
    return tilt if abs(tilt) <= MAX_TILT_DEG else None


def face_box(gray: np.ndarray, min_face: int = 24) -> tuple[int, int, int, int] | None:
    """The largest face (x, y, w, h) in a uint8 grayscale image, or None."""
    faces = _cascade(FACE_CASCADE).detectMultiScale(gray, 1.1, 10, minSize=(min_face, min_face))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def _crop_one(image: np.ndarray, size: int, margin: float, min_face: int, align: bool) -> np.ndarray | None:
    image = np.ascontiguousarray(image)
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    box = face_box(gray, min_face)
    if box is None:
        return None
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    rows, cols = gray.shape
    half = min(max(w, h) * (0.5 + margin), cx, cols - cx, cy, rows - cy)
    side = max(1, round(2 * half))
    tilt = eye_tilt(gray, box) if align else None
    # Rotate about the face centre by the eye tilt and move that centre to the middle of the cut.
    m = cv2.getRotationMatrix2D((cx, cy), tilt or 0.0, 1.0)
    m[:, 2] += (side / 2 - cx, side / 2 - cy)
    cut = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(cut, (size, size), interpolation=interp)


def crop_faces(
    images: list[np.ndarray], size: int, *, margin: float = 0.2, min_face: int = 24, align: bool = True
) -> tuple[np.ndarray, list[int]]:
    """Crop the largest face of each image to ``size`` x ``size``.

    images: uint8 arrays, each (H, W) grayscale or (H, W, 3) RGB, all of one layout; sizes may
    differ. Returns the stacked crops (N, size, size) or (N, size, size, 3), uint8, in input
    order for the images where a face was found, and the input indices where none was found.
    """
    if size < 1 or margin < 0 or min_face < 1:
        raise ValueError(f"crop_faces: need size >= 1, margin >= 0, min_face >= 1 (got {size}, {margin}, {min_face})")
    layouts = set()
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"crop_faces: image {i} must be uint8 (H,W) or (H,W,3), got {image.dtype} {image.shape}")
        layouts.add(image.ndim)
    if len(layouts) > 1:
        raise ValueError("crop_faces: images mix grayscale and RGB")
    tail = (3,) if layouts == {3} else ()
    for name in (FACE_CASCADE, EYE_CASCADE) if align else (FACE_CASCADE,):
        cascade_path(name)  # fail before any work when a cascade is missing

    def one(image: np.ndarray) -> np.ndarray | None:
        return _crop_one(image, size, margin, min_face, align)

    # detectMultiScale releases the GIL. With OpenCV's own threads on, a pool gains ~5% on 2 cores;
    # with cv2.setNumThreads(1) (as in a worker that limits threads) it doubles the rate.
    workers = min(len(images), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            crops = list(pool.map(one, images))
    else:
        crops = [one(image) for image in images]
    missed = [i for i, crop in enumerate(crops) if crop is None]
    found = [crop for crop in crops if crop is not None]
    stack = np.stack(found) if found else np.empty((0, size, size, *tail), np.uint8)
    return stack, missed
