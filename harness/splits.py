"""Stratified train/val/test splits, computed once on the driver and stored with the experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from harness.atomic import atomic_write_bytes

SPLIT_NAMES = ("train", "val", "test")


def _stratified_cut(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split`` stratified by label; classes too small to split (< 2 images) stay whole
    on the keep side so that they do not unstratify every other class."""
    counts = np.bincount(labels[indices], minlength=labels.max() + 1 if len(labels) else 0)
    small = np.isin(labels[indices], np.flatnonzero(counts < 2))
    keep, cut = train_test_split(indices[~small], test_size=fraction, random_state=seed, stratify=labels[indices[~small]])
    return np.concatenate([keep, indices[small]]), cut


def stratified_split(labels: np.ndarray, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Two-stage ``train_test_split`` stratified by label, as the Smelyakov protocol did (random_state=seed).

    Test is cut first, then val from the rest; indices are sorted within each split.
    """
    labels = np.asarray(labels)
    train_ratio, val_ratio, test_ratio = ratios
    rest, test = _stratified_cut(np.arange(len(labels)), labels, test_ratio, seed)
    train, val = _stratified_cut(rest, labels, val_ratio / (train_ratio + val_ratio), seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def save_splits(path: Path, splits: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{name: splits[name].astype(np.int64) for name in SPLIT_NAMES})
    atomic_write_bytes(path, buffer.getvalue())


def load_splits(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in SPLIT_NAMES}
