"""What every format reader shares: the error type, class names by name, and the raw decoded form.

Readers return a ``Decoded`` (per-sample class *names*, sources and optional subjects / official
split); ``to_dataset`` turns it into the canonical ``FerDataset``, so the class order, the contempt
policy and the label indices are decided in one place and never by a folder's alphabetical order.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ferbench.harness.data.dataset import FER2013_CLASSES, UNLABELLED_CLASS, FerDataset

CONTEMPT = "contempt"
CANONICAL_CLASSES: tuple[str, ...] = FER2013_CLASSES + (CONTEMPT,)
SYNONYMS: dict[str, str] = {
    "anger": "angry", "happiness": "happy", "sadness": "sad", "surprised": "surprise",
    "fearful": "fear", "disgusted": "disgust", "contemptuous": "contempt",
}
CLASS_LIST = ", ".join(CANONICAL_CLASSES)
NO_FACE = "no face found"  # the skip reason of data.face_detect, as opposed to an unreadable file


class DataError(ValueError):
    """A dataset cannot be read; ``str()`` is one line naming the file / line / folder and the fix."""


def link_problem(path: Path) -> str | None:
    """Why the symbolic link ``path`` cannot be followed, or None (not a link, or a working one)."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        try:
            return f"a broken symbolic link to {os.readlink(path)}"
        except OSError:
            return "a broken symbolic link"
    return None


def resolved(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, absolute and resolved; a symbolic link loop (pathlib's
    RuntimeError) is a ``DataError`` naming it."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError:
        raise DataError(f"{path}: cannot read this path (a symbolic link loop); fix the link") from None


def unreadable(path: Path, err: OSError, what: str = "path") -> str:
    """One line for an OSError met reading the user's ``path``: the path, why, and the fix."""
    why = link_problem(path)
    if why is None:
        not_a_folder = what == "folder" and err.errno == errno.ENOTDIR
        why = "a file, not a folder" if not_a_folder else (err.strerror or type(err).__name__)
    fix = "fix its permissions, or remove it" if err.errno in (errno.EACCES, errno.EPERM) else "fix the path, or remove it"
    return f"{path}: cannot read this {what} ({why}); {fix}"


def known_class(name: str) -> str | None:
    """The canonical class a (folder) name stands for, case-insensitively, or None."""
    key = name.strip().lower()
    key = SYNONYMS.get(key, key)
    return key if key in CANONICAL_CLASSES else None


def folder_class(folder_name: str, class_map: dict[str, str], where: str) -> str:
    """The canonical class of a class folder: ``data.class_map`` first, then names and synonyms."""
    mapped = {key.lower(): value for key, value in class_map.items()}.get(folder_name.lower())
    if mapped is not None:
        canonical = known_class(mapped)
        if canonical is None:
            raise DataError(f"data.class_map.{folder_name}: {mapped!r} is not a class; use one of {CLASS_LIST}")
        return canonical
    canonical = known_class(folder_name)
    if canonical is None:
        raise DataError(
            f"{where}: class folder {folder_name!r} is not a known emotion; map it with "
            f"--set data.class_map.{folder_name}=<class> (one of {CLASS_LIST})"
        )
    return canonical


@dataclass
class Decoded:
    """A dataset as read, before class indices are assigned.

    images:  uint8 array (N, H, W[, 3]), or a list of N uint8 arrays whose sizes may differ
             (an empty list until ``images.decode_sources`` reads them from ``sources``).
    labels:  canonical class name per sample (``UNLABELLED_CLASS`` in a dataset without emotions).
    sources: where each sample came from (file path, ``csv:line``, or ``video#frame=n``).
    action_units: uint8 0/1 matrix (N, len(au_names)) of multi-label targets, or None.
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    sources: np.ndarray
    subjects: np.ndarray | None = None
    official_split: np.ndarray | None = None
    action_units: np.ndarray | None = None
    au_names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def take(self, indices: np.ndarray) -> "Decoded":
        """The samples at ``indices`` (in that order); meta is shared."""
        indices = np.asarray(indices, dtype=np.int64)
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[indices]

        return replace(self, images=images, labels=self.labels[indices], sources=self.sources[indices],
                       subjects=pick(self.subjects), official_split=pick(self.official_split),
                       action_units=pick(self.action_units))

    def skip(self, reasons: dict[int, str]) -> "Decoded":
        """Drop the samples ``reasons`` names (index → why), listing them in ``meta["skipped"]``; a class
        left with no sample is counted in ``meta["vanished_classes"]`` (class → samples skipped)."""
        skipped = self.meta.setdefault("skipped", [])
        skipped.extend({"path": str(self.sources[i]), "reason": reason} for i, reason in reasons.items())
        kept = self.take(np.setdiff1d(np.arange(len(self.labels)), np.fromiter(reasons, np.int64, len(reasons))))
        labels = self.labels.astype(str)
        for name in sorted(map(str, set(labels) - set(kept.labels.astype(str)))):
            vanished = self.meta.setdefault("vanished_classes", {})
            vanished[name] = vanished.get(name, 0) + int((labels == name).sum())
        return kept


def contempt_policy(value: str) -> str:
    """``data.contempt`` checked: 'keep', 'drop', or the FER2013 class contempt is mapped to."""
    policy = value.strip().lower()
    if policy in ("keep", "drop") or policy in FER2013_CLASSES:
        return policy
    mapped = known_class(policy)
    if mapped in FER2013_CLASSES:
        return mapped
    raise DataError(f"data.contempt: {value!r} is not keep, drop or a class to map it to ({', '.join(FER2013_CLASSES)}); e.g. --set data.contempt=happy")


def no_face_found(source: Path | str, images: int) -> DataError:
    """The error of ``data.face_detect`` when not one of ``images`` images holds a face."""
    return DataError(f"{source}: no face found in any of the {images} images; set data.face_detect=false for pre-cropped faces")


def class_order(present: np.ndarray, source: str) -> tuple[str, ...]:
    """The class names of the sorted label names ``present``: the canonical order, or the one
    ``UNLABELLED_CLASS`` of a dataset without emotion labels (which cannot mix with emotions)."""
    if UNLABELLED_CLASS not in present:
        return tuple(name for name in CANONICAL_CLASSES if name in present)
    if len(present) > 1:
        raise DataError(f"{source}: some images have an emotion label and some have none; load one kind per dataset")
    return (UNLABELLED_CLASS,)


def to_dataset(decoded: Decoded, data_format: str, contempt: str, source: str) -> FerDataset:
    """The canonical ``FerDataset``: ``class_names`` are the classes present, in FER2013's order
    with ``contempt`` last when kept (or ``UNLABELLED_CLASS`` alone); labels index into them."""
    policy = contempt_policy(contempt)
    labels = decoded.labels.astype(str)
    if policy == "drop":
        kept = np.flatnonzero(labels != CONTEMPT)
        if len(kept) < len(labels):
            decoded = decoded.take(kept)
            decoded.meta["contempt_dropped"] = len(labels) - len(kept)
            labels = decoded.labels.astype(str)
    elif policy != "keep":
        labels = np.where(labels == CONTEMPT, policy, labels)
    if not len(labels):
        raise DataError(f"{source}: no images left to load; check the folder and the data options")
    present, inverse = np.unique(labels, return_inverse=True)  # present is sorted by name
    class_names = class_order(present, source)
    canonical_index = np.array([class_names.index(name) for name in present], dtype=np.int64)
    images = decoded.images if isinstance(decoded.images, np.ndarray) else np.stack(decoded.images)
    meta = {**decoded.meta, "format": data_format, "source": source}
    if decoded.official_split is not None:
        meta["official_split"] = decoded.official_split
    return FerDataset(
        name=data_format, images=images, labels=canonical_index[inverse], class_names=class_names,
        subjects=decoded.subjects, action_units=decoded.action_units, au_names=tuple(decoded.au_names),
        sources=decoded.sources, meta=meta,
    )
