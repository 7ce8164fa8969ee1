"""Sample test images kept with the experiment, so the report can show them beside each model's
predicted probabilities (Smelyakov et al. 2022, Figs 11-17) without the dataset.

The pick is made once on the driver: a fixed seeded permutation of the first fold's test indices,
then the first ``per_class`` images of each class in that order. It depends on the seed and the
test split only, never on the order classes or trials were processed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ferbench.harness.study.atomic import atomic_write_bytes

Samples = dict[str, np.ndarray]


def select_samples(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] | list[str],
                   test_idx: np.ndarray, per_class: int, seed: int) -> Samples:
    """Up to ``per_class`` test images per class, ordered by class then by the seeded pick.

    Returns ``indices`` (dataset indices, int64), ``labels`` (int64), ``class_names`` (str) and
    ``images`` (uint8, the dataset's own layout). A class with fewer test images gives all it has.
    """
    test_idx = np.sort(np.asarray(test_idx, dtype=np.int64))
    order = test_idx[np.random.default_rng(seed).permutation(len(test_idx))]
    labels = np.asarray(labels, dtype=np.int64)
    chosen = [order[labels[order] == c][:max(per_class, 0)] for c in range(len(class_names))]
    indices = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return {
        "indices": indices.astype(np.int64),
        "labels": labels[indices],
        "class_names": np.asarray(list(class_names), dtype=str),
        "images": np.asarray(images)[indices].astype(np.uint8, copy=False),
    }


def save_samples(path: Path, samples: Samples) -> None:
    """Write ``samples`` as one .npz, atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **samples)
    atomic_write_bytes(path, buffer.getvalue())


def load_samples(path: Path) -> Samples | None:
    """The stored samples, or None when the experiment has none (older version, or disabled)."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}
