"""Another dataset's labels in the training data's classes, for cross-dataset evaluation (``eval.datasets``).

Two datasets rarely share their label sets (CK+ has contempt, FER2013 has neutral), so before a model trained on
one is scored on the other, every image of the other gets a training class or is left out:

1. ``map`` (target class → training class, e.g. contempt → happy) is applied first; a class it does not name
   keeps its own name, and a name that is a training class is that class.
2. An image whose class is still no training class is dropped, or (``mass_centre``) given the class of the
   nearest *mass centre*: Moravčík (2021, §6.4.1–6.4.2) takes for each training class its most representative
   image, the one with the lowest total difference to every other image of the class (a medoid), and labels an
   outside image with the class of the mass centre it differs least from. ``remap="all"`` re-labels every image
   that way, not only the unmapped ones (the thesis's Fig. 6.10).

"Difference" is literal: ``pixel`` is the sum of absolute pixel-by-pixel differences of two images (L1 over
all pixels and channels); ``histogram`` the sum of absolute differences of their 256-bin intensity histograms,
each as frequencies (counts / pixels, every channel pooled), so images of any size compare. The mass centres
come from the training part of the training data only, never from its validation or test part, and from at
most ``max_images`` images per class (a seeded sample): the medoid search compares every pair, O(n²).

Pure: arrays in, arrays out; torch only for the chunked distance sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

DROPPED = -1  # the label of a target image that is not scored
HOW = ("name", "map", "mass_centre", "dropped")  # how each target image got its label (``LabelMapping.how``)
BINS = 256
_CHUNK = 256  # rows of a distance matrix computed at once: 256 × n float64 values

Distance = Literal["histogram", "pixel"]


@dataclass
class LabelMapping:
    """The target images' labels in the source's classes, and how each got it.

    labels:  per target image, the index of its source class, or ``DROPPED``.
    how:     per target image, an index into ``HOW``.
    medoids: source class index → index (into the source images searched) of its mass centre; empty when no
             mass centre was needed.
    """

    labels: np.ndarray
    how: np.ndarray
    medoids: dict[int, int] = field(default_factory=dict)

    def confusion(self, target_labels: np.ndarray, n_target: int, n_source: int) -> np.ndarray:
        """Counts of (target class, assigned source class), the last column the dropped images: the mapping's
        confusion matrix (the thesis's Figs 6.10–6.13, rows the target dataset's labels)."""
        columns = np.where(self.labels == DROPPED, n_source, self.labels)
        matrix = np.zeros((n_target, n_source + 1), dtype=np.int64)
        np.add.at(matrix, (np.asarray(target_labels, dtype=np.int64), columns), 1)
        return matrix

    def counts(self) -> dict[str, int]:
        """Images per way of labelling (``HOW``)."""
        return {name: int((self.how == index).sum()) for index, name in enumerate(HOW)}


def class_lookup(target_names: tuple[str, ...], source_names: tuple[str, ...],
                 mapping: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(per target class: the source class index it counts as after ``mapping``, or ``DROPPED``; per target
    class: its ``HOW`` index, "name", "map" or "dropped")."""
    lookup = np.full(len(target_names), DROPPED, dtype=np.int64)
    how = np.full(len(target_names), HOW.index("dropped"), dtype=np.int64)
    for index, name in enumerate(target_names):
        named = mapping.get(name, name)
        if named in source_names:
            lookup[index] = source_names.index(named)
            how[index] = HOW.index("map" if name in mapping else "name")
    return lookup, how


def image_features(images: np.ndarray, distance: Distance) -> torch.Tensor:
    """One float64 row per image whose L1 distances are the differences: its pixels (``pixel``), or its
    256-bin intensity histogram as frequencies (``histogram``)."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    if distance == "pixel":
        return flat.double()
    counts = torch.zeros(len(flat), BINS, dtype=torch.float64)
    counts.scatter_add_(1, flat.long(), torch.ones(flat.shape, dtype=torch.float64))
    return counts / max(flat.shape[1], 1)


def medoid(features: torch.Tensor) -> int:
    """The row with the lowest total L1 distance to every row (the first such row on a tie), computed in
    chunks of rows so that memory stays at ``_CHUNK`` × n."""
    totals = torch.cat([torch.cdist(features[lo:lo + _CHUNK], features, p=1).sum(1)
                        for lo in range(0, len(features), _CHUNK)])
    return int(torch.argmin(totals))


def nearest(images: np.ndarray, centres: np.ndarray, distance: Distance) -> np.ndarray:
    """Per image, the index of the centre (an image too) it differs least from (the first on a tie); the
    images' features are made ``_CHUNK`` at a time, so a large target dataset never sits in float64 at once."""
    centre_features = image_features(centres, distance)
    found = [torch.cdist(image_features(images[lo:lo + _CHUNK], distance), centre_features, p=1).argmin(1)
             for lo in range(0, len(images), _CHUNK)]
    return torch.cat(found).numpy().astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def mass_centres(images: np.ndarray, labels: np.ndarray, num_classes: int, distance: Distance,
                 max_images: int, seed: int) -> dict[int, int]:
    """Source class index → index into ``images`` of its mass centre, for every class with images. A class
    with more than ``max_images`` images is searched in a sample of that many, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    centres = {}
    for index in range(num_classes):
        members = np.flatnonzero(labels == index)
        if len(members) > max_images:
            members = np.sort(rng.choice(members, max_images, replace=False))
        if len(members):
            centres[index] = int(members[medoid(image_features(images[members], distance))])
    return centres


def map_labels(target_labels: np.ndarray, target_names: tuple[str, ...], source_names: tuple[str, ...],
               mapping: dict[str, str], unmapped: Literal["drop", "mass_centre"] = "drop", *,
               target_images: np.ndarray | None = None, source_images: np.ndarray | None = None,
               source_labels: np.ndarray | None = None, distance: Distance = "histogram",
               remap: Literal["unmapped", "all"] = "unmapped", max_images: int = 1000, seed: int = 0) -> LabelMapping:
    """The target images' labels in the source classes. ``source_images`` / ``source_labels`` are the source's
    TRAINING images (mass centres are searched there only); ``target_images`` must already have the source's
    size and channels. Both are needed only with ``unmapped="mass_centre"``."""
    lookup, class_how = class_lookup(target_names, source_names, mapping)
    target_labels = np.asarray(target_labels, dtype=np.int64)
    labels, how = lookup[target_labels], class_how[target_labels]
    if unmapped == "drop":
        return LabelMapping(labels, how)
    if target_images is None or source_images is None or source_labels is None:
        raise ValueError("map_labels: unmapped='mass_centre' needs target_images, source_images and source_labels")
    chosen = np.arange(len(labels)) if remap == "all" else np.flatnonzero(labels == DROPPED)
    if not len(chosen):  # every image has a training class by name or map: no centre is searched
        return LabelMapping(labels, how)
    centres = mass_centres(source_images, np.asarray(source_labels), len(source_names), distance, max_images, seed)
    if centres:
        classes = np.array(sorted(centres), dtype=np.int64)
        labels, how = labels.copy(), how.copy()
        labels[chosen] = classes[nearest(target_images[chosen], source_images[[centres[c] for c in classes]], distance)]
        how[chosen] = HOW.index("mass_centre")
    return LabelMapping(labels, how, centres)
