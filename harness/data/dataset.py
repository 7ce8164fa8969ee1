"""The canonical in-memory form of every FER dataset FERBench reads or generates.

Images stay uint8 from decoding to the training device: a dataset is a handful of numpy
arrays that Ray places in the object store once and every trial maps without copying.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# FER2013's label order (the CSV's `emotion` column); every loader maps into it by name.
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# The one class of a dataset without emotion labels (DISFA, a multi-label CSV): its labels are all 0,
# so that class counts and stratified splits work unchanged; its targets are ``action_units``.
UNLABELLED_CLASS = "unlabelled"

# Facial action units carried as multi-label targets (Arsirii & Petrosiuk's DISFA subset).
ACTION_UNITS: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")


@dataclass
class FerDataset:
    """Images, labels and per-sample metadata of one dataset.

    images:      uint8, shape (N, H, W) for grayscale or (N, H, W, C) for colour.
    labels:      int64, shape (N,), indices into ``class_names``.
    class_names: the class order ``labels`` refers to.
    subjects:    int64 identity / subject id per sample, or None when unknown.
    action_units: uint8 0/1 matrix (N, len(au_names)), or None.
    sources:     where each sample came from (image path, or ``<csv>:<line>``), or None; kept so
                 that a duplicate, a skipped file or a misclassified sample can be traced back.
    meta:        loader facts: ``format``, ``source``, ``official_split`` (per-sample split name
                 where the dataset has one), ``skipped`` ({path, reason}), ``resized`` (paths).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    subjects: np.ndarray | None = None
    action_units: np.ndarray | None = None
    au_names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    sources: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(f"{self.name}: images must be uint8 (N,H,W) or (N,H,W,C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {n} images")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")
        for extra in ("subjects", "action_units", "sources"):
            value = getattr(self, extra)
            if value is not None and len(value) != n:
                raise ValueError(f"{self.name}: {len(value)} {extra} for {n} images")
        split = self.meta.get("official_split")
        if split is not None and len(split) != n:
            raise ValueError(f"{self.name}: {len(split)} official_split values for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[3]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self, indices: np.ndarray | None = None) -> np.ndarray:
        labels = self.labels if indices is None else self.labels[indices]
        return np.bincount(labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """SHA-256 over pixels and labels (action units included): two datasets with equal fingerprints train
        identically."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        digest.update("|".join(self.class_names).encode())
        if self.action_units is not None:  # absent for emotion-only datasets: their fingerprints stay as they were
            digest.update(np.ascontiguousarray(self.action_units).tobytes())
            digest.update("|".join(self.au_names).encode())
        return digest.hexdigest()
