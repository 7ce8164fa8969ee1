"""Stratified train/val/test splits, computed once on the driver and stored with the experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from harness.atomic import atomic_write_bytes

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(labels: np.ndarray, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Two-stage ``train_test_split`` stratified by label, as the Smelyakov protocol did (random_state=seed).

    Test is cut first, then val from the rest; indices are sorted within each split.
    """
    train_ratio, val_ratio, test_ratio = ratios
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    rest, test = train_test_split(indices, test_size=test_ratio, random_state=seed, stratify=stratify)
    rest_labels = labels[rest]
    rest_counts = np.bincount(rest_labels)
    stratify_rest = rest_labels if rest_counts[rest_counts > 0].min() >= 2 else None
    train, val = train_test_split(
        rest, test_size=val_ratio / (train_ratio + val_ratio), random_state=seed, stratify=stratify_rest
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def save_splits(path: Path, splits: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{name: splits[name].astype(np.int64) for name in SPLIT_NAMES})
    atomic_write_bytes(path, buffer.getvalue())


def load_splits(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in SPLIT_NAMES}
