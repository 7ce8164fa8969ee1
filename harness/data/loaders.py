"""Dataset loaders by name: each turns a ``DataSpec`` into a validated ``FerDataset``.

Real datasets go: resolve ``data.path`` → detect the format (``auto``) → reuse the dataset cache,
or read (``ferbench.harness.data.formats``), crop faces (``data.face_detect``), stack to one size, map classes
to the canonical order, and cache. Every problem is a ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ferbench.harness.data.cache import cached_dataset
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.formats import READERS
from ferbench.harness.data.formats.common import (NO_FACE, DataError, Decoded, contempt_policy, no_face_found, resolved,
                                                   to_dataset, unreadable)
from ferbench.harness.data.formats.detect import detect_format
from ferbench.harness.data.formats.images import stack_images

__all__ = ["DATASETS", "DataError", "check_data_source", "load_dataset"]

log = logging.getLogger(__name__)


def load_synthfer(spec) -> FerDataset:
    from ferbench.harness.data.synthfer import generate_synthfer

    return generate_synthfer(
        num_images=spec.num_images, image_size=spec.image_size, seed=spec.seed, label_noise=spec.label_noise
    )


def dataset_path(spec) -> Path:
    """``data.path`` resolved to an absolute path that exists (Tune changes the working directory)."""
    if not spec.path:
        example = READERS[spec.format].example.split(" (")[0] if spec.format in READERS else "/data/fer2013.csv"
        raise DataError(f"data.path: format {spec.format} needs the dataset's file or folder, e.g. --set data.path={example}")
    path = resolved(spec.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist; point it at the dataset's file or folder")
    return path


def dataset_format(spec, path: Path) -> str:
    """``data.format``, or with ``auto`` the detected one (a notice on the ``ferbench`` logger)."""
    if spec.format != "auto":
        return spec.format
    found = detect_format(path)
    log.info("data: detected format %s in %s", found, path)
    return found


def check_takes(data_format: str, path: Path) -> None:
    """``DataError`` when ``path`` is a file where ``data_format`` reads a folder, or the other way round."""
    reader = READERS[data_format]
    if (reader.takes == "file" and not path.is_file()) or (reader.takes == "folder" and not path.is_dir()):
        raise DataError(f"data.path: {path} is not a {reader.takes}; format {data_format} reads a {reader.takes} such as {reader.example}")


def check_data_source(spec) -> list[str]:
    """What ``load_dataset`` would refuse before reading any image: its options, and whether
    ``data.path`` exists, is the kind of path its format reads, and opens. Milliseconds: nothing is
    decoded, detected or cached, so preflight can say it before any expensive step."""
    if spec.format == "synthfer":
        return []
    problems = []
    try:
        contempt_policy(spec.contempt)
    except DataError as err:
        problems.append(str(err))
    try:
        path = dataset_path(spec)
        if spec.format in READERS:
            check_takes(spec.format, path)
        if path.is_dir():  # the top level opens: a folder lists, a file reads (never a FIFO: is_file is False)
            with os.scandir(path) as entries:
                next(entries, None)
        elif path.is_file():
            with open(path, "rb"):
                pass
    except DataError as err:
        problems.append(str(err))
    except OSError as err:
        problems.append(unreadable(Path(err.filename) if err.filename else Path(spec.path), err))
    return problems


def crop_detected_faces(decoded: Decoded, size: int, source: Path) -> Decoded:
    """The largest face of every image, ``size``×``size``; images without one are skipped."""
    from ferbench.harness.data.face_detect import crop_faces

    crops, missed = crop_faces(list(decoded.images), size)
    if len(missed) == len(decoded.labels):
        raise no_face_found(source, len(missed))
    decoded = decoded.skip({i: NO_FACE for i in missed}) if missed else decoded
    return replace(decoded, images=crops)


def read_dataset(spec, data_format: str, path: Path) -> FerDataset:
    """Read ``path`` as ``data_format`` into the canonical form, bypassing the cache."""
    check_takes(data_format, path)
    reader = READERS[data_format]
    decoded = reader.read(spec, path)
    if spec.face_detect and not reader.crops_faces:
        decoded = crop_detected_faces(decoded, spec.face_size, path)
    return to_dataset(stack_images(decoded), data_format, spec.contempt, str(path))


def load_real_dataset(spec) -> FerDataset:
    """A real dataset from ``data.path``, from the dataset cache when its source is unchanged."""
    contempt_policy(spec.contempt)  # a bad option fails before any decoding
    path = dataset_path(spec)
    data_format = dataset_format(spec, path)
    if not spec.cache:
        return read_dataset(spec, data_format, path)
    inputs = READERS[data_format].inputs(spec, path)
    return cached_dataset(spec, data_format, path, inputs, lambda: read_dataset(spec, data_format, path))


DATASETS: dict[str, Callable[..., FerDataset]] = {
    "synthfer": load_synthfer,
    **{name: load_real_dataset for name in (*READERS, "auto")},
}


def drop_classes(dataset: FerDataset, names: list[str]) -> FerDataset:
    """``dataset`` without the images of the classes ``names`` (``data.drop_classes``), labels
    re-indexed into the remaining classes; ``meta["dropped_classes"]`` counts what went."""
    vanished = dataset.meta.get("vanished_classes", {})
    absent = [name for name in names if name not in dataset.class_names and name not in vanished]
    if absent:
        raise DataError(f"data.drop_classes: {', '.join(map(repr, absent))} not in this dataset (its classes: "
                        f"{', '.join(dataset.class_names)}); remove {'it' if len(absent) == 1 else 'them'} from the list")
    dropped = [dataset.class_names.index(name) for name in names if name in dataset.class_names]
    if not dropped:
        return dataset
    if len(dropped) == dataset.num_classes:
        raise DataError(f"data.drop_classes: {', '.join(names)} leaves no class to learn; drop fewer classes")
    keep = ~np.isin(dataset.labels, dropped)
    remaining = tuple(name for c, name in enumerate(dataset.class_names) if c not in dropped)
    new_index = np.full(dataset.num_classes, -1, dtype=np.int64)
    new_index[[c for c in range(dataset.num_classes) if c not in dropped]] = np.arange(len(remaining))
    n = len(dataset)

    def per_sample(value):
        return value[keep] if isinstance(value, np.ndarray) and value.ndim and len(value) == n else value

    meta = {key: per_sample(value) for key, value in dataset.meta.items()}
    if isinstance(meta.get("clean_labels"), np.ndarray):  # SynthFER's labels before noise: indices too
        meta["clean_labels"] = new_index[meta["clean_labels"]]
    meta["dropped_classes"] = {dataset.class_names[c]: int((dataset.labels == c).sum()) for c in dropped}
    return replace(
        dataset, images=dataset.images[keep], labels=new_index[dataset.labels[keep]], class_names=remaining,
        subjects=per_sample(dataset.subjects), action_units=per_sample(dataset.action_units),
        sources=per_sample(dataset.sources), meta=meta,
    )


def load_dataset(spec) -> FerDataset:
    """The dataset ``spec`` (a ``DataSpec``) describes, less ``data.drop_classes``. Every problem,
    an unreadable path included, is a ``DataError``: one line naming the path and the fix."""
    try:
        dataset = DATASETS[spec.format](spec)
    except OSError as err:
        path = Path(err.filename) if err.filename else Path(spec.path or ".")
        raise DataError(unreadable(path, err)) from None
    return drop_classes(dataset, list(spec.drop_classes)) if spec.drop_classes else dataset
