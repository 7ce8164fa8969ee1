"""Dataset loaders by name: each turns a ``DataSpec`` into a validated ``FerDataset``.

Real datasets go: resolve ``data.path`` → detect the format (``auto``) → reuse the dataset cache,
or read (``harness.formats``), crop faces (``data.face_detect``), stack to one size, map classes
to the canonical order, and cache. Every problem is a ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from harness.data_cache import cached_dataset
from harness.dataset import FerDataset
from harness.formats import READERS
from harness.formats.common import NO_FACE, DataError, Decoded, contempt_policy, to_dataset
from harness.formats.detect import detect_format
from harness.formats.images import stack_images

__all__ = ["DATASETS", "DataError", "load_dataset"]


def load_synthfer(spec) -> FerDataset:
    from harness.synthfer import generate_synthfer

    return generate_synthfer(
        num_images=spec.num_images, image_size=spec.image_size, seed=spec.seed, label_noise=spec.label_noise
    )


def dataset_path(spec) -> Path:
    """``data.path`` resolved to an absolute path that exists (Tune changes the working directory)."""
    if not spec.path:
        example = READERS[spec.format].example.split(" (")[0] if spec.format in READERS else "/data/fer2013.csv"
        raise DataError(f"data.path: format {spec.format} needs the dataset's file or folder, e.g. --set data.path={example}")
    path = Path(spec.path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist; point it at the dataset's file or folder")
    return path


def dataset_format(spec, path: Path) -> str:
    """``data.format``, or with ``auto`` the detected one (said on stderr)."""
    if spec.format != "auto":
        return spec.format
    found = detect_format(path)
    print(f"data: detected format {found} in {path}", file=sys.stderr)
    return found


def crop_detected_faces(decoded: Decoded, size: int, source: Path) -> Decoded:
    """The largest face of every image, ``size``×``size``; images without one are skipped."""
    from harness.face_detect import crop_faces

    crops, missed = crop_faces(list(decoded.images), size)
    if len(missed) == len(decoded.labels):
        raise DataError(f"{source}: no face found in any of the {len(missed)} images; set data.face_detect=false for pre-cropped faces")
    decoded = decoded.skip({i: NO_FACE for i in missed}) if missed else decoded
    return replace(decoded, images=crops)


def read_dataset(spec, data_format: str, path: Path) -> FerDataset:
    """Read ``path`` as ``data_format`` into the canonical form, bypassing the cache."""
    reader = READERS[data_format]
    if (reader.takes == "file" and not path.is_file()) or (reader.takes == "folder" and not path.is_dir()):
        raise DataError(f"data.path: {path} is not a {reader.takes}; format {data_format} reads a {reader.takes} such as {reader.example}")
    decoded = reader.read(spec, path)
    if spec.face_detect:
        decoded = crop_detected_faces(decoded, spec.face_size, path)
    return to_dataset(stack_images(decoded), data_format, spec.contempt, str(path))


def load_real_dataset(spec) -> FerDataset:
    """A real dataset from ``data.path``, from the dataset cache when its source is unchanged."""
    contempt_policy(spec.contempt)  # a bad option fails before any decoding
    path = dataset_path(spec)
    data_format = dataset_format(spec, path)
    if not spec.cache:
        return read_dataset(spec, data_format, path)
    inputs = READERS[data_format].inputs(path)
    return cached_dataset(spec, data_format, path, inputs, lambda: read_dataset(spec, data_format, path))


DATASETS: dict[str, Callable[..., FerDataset]] = {
    "synthfer": load_synthfer,
    **{name: load_real_dataset for name in (*READERS, "auto")},
}


def load_dataset(spec) -> FerDataset:
    return DATASETS[spec.format](spec)
