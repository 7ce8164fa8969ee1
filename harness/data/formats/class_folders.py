"""Datasets laid out as one folder per class: ``folder``, ``ckplus`` and ``fer2013_folders``.

``ckplus`` reads subject ids from the file names and, with ``data.ckplus_frames=peak``, keeps one image
per sequence: its last frame, the peak expression.

Class folders are mapped to canonical classes by name (``common.folder_class``), never by their
alphabetical position: FER2013's image-folder release sorts ``neutral`` before ``sad``, which is
not the CSV's order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ferbench.harness.data.formats.common import DataError, Decoded, folder_class, link_problem, unreadable
from ferbench.harness.data.formats.images import IMAGE_SUFFIXES, decode_sources

CKPLUS_NAME = re.compile(r"^S(\d+)_(\d+)_(\d+)$")  # S<subject>_<sequence>_<frame>
FER2013_SPLITS = ("train", "test")
_SUFFIXES = ", ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)


def entries(folder: Path) -> list[Path]:
    """Visible entries of ``folder``, sorted by name; a folder that cannot be listed (no permission,
    a broken link, a symbolic link loop, a file) is a ``DataError`` naming it."""
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as err:
        raise DataError(unreadable(folder, err, "folder")) from None


def subfolders(root: Path) -> list[Path]:
    """Visible subfolders of ``root``, sorted by name. A link there that leads nowhere may have been a
    class folder, so it is a ``DataError`` rather than a class that silently vanishes."""
    folders = []
    for path in entries(root):
        problem = link_problem(path)
        if problem:
            raise DataError(f"{path}: cannot be read ({problem}); fix the link, or remove it if it is not a class folder")
        if path.is_dir():
            folders.append(path)
    return folders


def other_entries(root: Path) -> list[Path]:
    """Visible entries of ``root`` that are not folders (files a class-folder layout ignores)."""
    return [path for path in entries(root) if not path.is_dir()]


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, everything else visible) in ``folder``, sorted by name. An entry with an image
    suffix that is not a folder counts as an image even when it is a broken link or not a regular
    file: decoding skips and lists it (``data.strict`` stops) instead of ignoring it unseen."""
    images, others = [], []
    for path in entries(folder):
        is_image = path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()
        (images if is_image else others).append(path)
    return images, others


def class_tree(root: Path, class_map: dict[str, str]) -> tuple[list[str], list[Path], list[Path]]:
    """(class name per image, image path, ignored non-image files) of ``<root>/<class>/<image>``."""
    folders = subfolders(root)
    if not folders:
        raise DataError(f"{root}: no class folders; expected <root>/<class>/{{{_SUFFIXES}}}, e.g. {root}/happy/0001.png")
    labels: list[str] = []
    paths: list[Path] = []
    ignored: list[Path] = other_entries(root)
    for folder in folders:
        name = folder_class(folder.name, class_map, str(root))
        images, others = image_files(folder)
        if not images:
            raise DataError(f"{folder}: empty class folder (no {_SUFFIXES} files); add its images or remove the folder")
        labels += [name] * len(images)
        paths += images
        ignored += others
    return labels, paths, ignored


def _decoded(labels: list[str], paths: list[Path], ignored: list[Path], **extra) -> Decoded:
    meta = {"ignored": [str(p) for p in ignored]} if ignored else {}
    return Decoded(images=[], labels=np.array(labels), sources=np.array([str(p) for p in paths]), meta=meta, **extra)


def read_folder(spec, root: Path) -> Decoded:
    """``<root>/<class>/*.png|jpg|jpeg|bmp`` with classes by name, synonym or ``data.class_map``."""
    return decode_sources(_decoded(*class_tree(root, spec.class_map)), spec.strict)


def ckplus_name(path: Path) -> tuple[int, int, int]:
    """(subject, sequence, frame) of a CK+ file name (``S005_001_00000011.png`` → (5, 1, 11))."""
    match = CKPLUS_NAME.match(path.stem)
    if match is None:
        raise DataError(
            f"{path}: not a CK+ file name S<subject>_<sequence>_<frame>{path.suffix}; rename it, "
            "or use --set data.format=folder (no subject ids)"
        )
    subject, sequence, frame = map(int, match.groups())
    return subject, sequence, frame


def ckplus_subject(path: Path) -> int:
    """The subject id of a CK+ file name (``S005_001_00000011.png`` → 5)."""
    return ckplus_name(path)[0]


def peak_frames(labels: list[str], paths: list[Path]) -> list[int]:
    """Indices of the last frame of each (subject, sequence), in file order: a CK+ sequence runs from
    neutral to the peak expression, so its highest frame number is the peak (the thesis's 327 images).
    A sequence filed under two classes has no single label, so it is a ``DataError`` naming both files."""
    peaks: dict[tuple[int, int], tuple[int, int]] = {}  # (subject, sequence) → (frame, index) of its highest frame
    for index, path in enumerate(paths):
        subject, sequence, frame = ckplus_name(path)
        kept = peaks.setdefault((subject, sequence), (frame, index))[1]
        if labels[kept] != labels[index]:
            raise DataError(
                f"{paths[kept]} and {path}: sequence S{subject:03d}_{sequence:03d} is filed under two classes "
                f"({labels[kept]}, {labels[index]}); move its frames into one class folder"
            )
        peaks[subject, sequence] = max(peaks[subject, sequence], (frame, index))
    return sorted(index for _, index in peaks.values())


def read_ckplus(spec, root: Path) -> Decoded:
    """CK+ 48×48 class folders; the subject id of every image comes from its file name, and with
    ``data.ckplus_frames=peak`` only each sequence's last frame is read."""
    labels, paths, ignored = class_tree(root, spec.class_map)
    if spec.ckplus_frames == "peak":
        keep = peak_frames(labels, paths)
        labels, paths = [labels[i] for i in keep], [paths[i] for i in keep]
    subjects = np.array([ckplus_subject(path) for path in paths], dtype=np.int64)
    return decode_sources(_decoded(labels, paths, ignored, subjects=subjects), spec.strict)


def read_fer2013_folders(spec, root: Path) -> Decoded:
    """FER2013's image-folder release ``<root>/train|test/<class>/``; the folder is the official split."""
    by_name = {folder.name.lower(): folder for folder in subfolders(root)}
    labels: list[str] = []
    paths: list[Path] = []
    ignored: list[Path] = [folder for name, folder in by_name.items() if name not in FER2013_SPLITS] + other_entries(root)
    split: list[str] = []
    for part in FER2013_SPLITS:
        if part not in by_name:
            raise DataError(f"{root}: no {part}/ folder; fer2013_folders expects {root}/train/<class>/ and {root}/test/<class>/")
        part_labels, part_paths, part_ignored = class_tree(by_name[part], spec.class_map)
        labels += part_labels
        paths += part_paths
        ignored += part_ignored
        split += [part] * len(part_paths)
    return decode_sources(_decoded(labels, paths, ignored, official_split=np.array(split)), spec.strict)
