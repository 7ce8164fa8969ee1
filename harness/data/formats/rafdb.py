"""RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (sic) plus the aligned 100×100 colour faces.

Each list line is ``train_00001.jpg 5``; the image is ``Image/aligned/train_00001_aligned.jpg``
and the name's prefix is the official split. Labels are RAF-DB's own 1..7, mapped by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferbench.harness.data.formats.common import DataError, Decoded
from ferbench.harness.data.formats.images import decode_sources

LIST_NAME = "list_patition_label.txt"
RAFDB_CLASSES: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
RAFDB_SPLITS = ("train", "test")
_LABEL_HELP = "1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral"


def list_file(path: Path) -> Path | None:
    """The label list a RAF-DB ``path`` (the root, its EmoLabel folder, or the file) points at."""
    for candidate in (path, path / "EmoLabel" / LIST_NAME, path / LIST_NAME):
        if candidate.is_file() and candidate.name == LIST_NAME:
            return candidate
    return None


def aligned_folder(labels: Path) -> Path:
    """The folder of aligned images that belongs to the list file ``labels``."""
    here = labels.parent
    tried = [here.parent / "Image" / "aligned", here / "Image" / "aligned", here / "aligned"]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise DataError(f"{labels}: no aligned image folder next to it; tried {', '.join(map(str, tried))}; put RAF-DB's Image/aligned there")


def rafdb_inputs(path: Path) -> list[Path]:
    """What RAF-DB is read from (the list file and the aligned folder), for the cache fingerprint:
    not the whole root, whose original-size images are never read."""
    labels = list_file(path)
    try:
        return [path] if labels is None else [labels, aligned_folder(labels)]
    except DataError:
        return [labels]


def _entry(labels: Path, number: int, line: str, available: set[str], images: Path) -> tuple[str, str, Path]:
    """(class, split, image path) of one list line; ``DataError`` naming the line otherwise."""
    where = f"{labels}: line {number}"
    fields = line.split()
    if len(fields) != 2:
        raise DataError(f"{where}: {line.strip()!r} is not '<image name> <label>', e.g. 'train_00001.jpg 5'; fix the line")
    name, label = fields
    if not label.isdigit() or int(label) not in RAFDB_CLASSES:
        raise DataError(f"{where}: label {label!r} is not 1..7 ({_LABEL_HELP}); fix the line")
    split = name.split("_", 1)[0].lower()
    if split not in RAFDB_SPLITS:
        raise DataError(f"{where}: image name {name!r} starts with neither train_ nor test_ (the official split); fix the line")
    stem, dot, suffix = name.rpartition(".")
    for candidate in (f"{stem}_aligned{dot}{suffix}", name):
        if candidate in available:
            return RAFDB_CLASSES[int(label)], split, images / candidate
    raise DataError(f"{where}: image {images / f'{stem}_aligned{dot}{suffix}'} is missing; put the aligned image there or delete the line")


def read_rafdb(spec, path: Path) -> Decoded:
    """RAF-DB basic (RGB); ``path`` is the RAF-DB root, or the list file itself."""
    labels = list_file(path)
    if labels is None:
        raise DataError(f"{path}: no EmoLabel/{LIST_NAME}; point data.path at the RAF-DB basic folder that holds EmoLabel/ and Image/aligned/")
    images = aligned_folder(labels)
    available = {entry.name for entry in images.iterdir()}
    rows = [
        _entry(labels, number, line, available, images)
        for number, line in enumerate(labels.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
        if line.strip()
    ]
    if not rows:
        raise DataError(f"{labels}: no entries; expected lines like 'train_00001.jpg 5'")
    names, split, files = zip(*rows)
    decoded = Decoded(images=[], labels=np.array(names), sources=np.array([str(f) for f in files]), official_split=np.array(split))
    return decode_sources(decoded, spec.strict, force_rgb=True)
