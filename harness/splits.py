"""Splits as the papers made them, computed once on the driver and stored with the experiment.

A study has one or more *folds*; each fold is a dict of index arrays ``train``, ``val``, ``test``
and, with ``split.unlabeled_fraction``, ``unlabeled`` (labels hidden from pseudo-labelling).
Every kind but ``subject_kfold`` has a single fold, 0.

- ``stratified``: two-stage ``train_test_split`` by ``split.ratios`` and ``split.seed``
  (Smelyakov: 70/10/20, random_state 42).
- ``official``: the dataset's own split (FER2013 ``Usage``: Training / PublicTest / PrivateTest,
  ``split.test`` choosing which test part is reported and the other serving as val; RAF-DB and the
  FER2013 folders: train / test, val cut from train by ``split.val_fraction``).
- ``subject_kfold``: ``split.k`` subject-exclusive folds (``StratifiedGroupKFold``), val a
  subject-exclusive ``split.val_fraction`` of each fold's training subjects.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from harness.atomic import atomic_write_bytes
from harness.dataset import FerDataset

SPLIT_NAMES = ("train", "val", "test")

Split = dict[str, np.ndarray]


class SplitError(ValueError):
    """The requested split cannot be made from this dataset; ``str()`` names the key and the fix."""


def _stratified_cut(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split`` stratified by label; classes too small to split (< 2 images) stay whole
    on the keep side so that they do not unstratify every other class."""
    counts = np.bincount(labels[indices], minlength=labels.max() + 1 if len(labels) else 0)
    small = np.isin(labels[indices], np.flatnonzero(counts < 2))
    keep, cut = train_test_split(indices[~small], test_size=fraction, random_state=seed, stratify=labels[indices[~small]])
    return np.concatenate([keep, indices[small]]), cut


def stratified_split(labels: np.ndarray, ratios: tuple[float, float, float], seed: int) -> Split:
    """Two-stage ``train_test_split`` stratified by label, as the Smelyakov protocol did (random_state=seed).

    Test is cut first, then val from the rest; indices are sorted within each split.
    """
    labels = np.asarray(labels)
    train_ratio, val_ratio, test_ratio = ratios
    rest, test = _stratified_cut(np.arange(len(labels)), labels, test_ratio, seed)
    train, val = _stratified_cut(rest, labels, val_ratio / (train_ratio + val_ratio), seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def official_split(dataset: FerDataset, test: str) -> Split:
    """The dataset's own split: FER2013's three ``Usage`` parts (the one not reported as test is
    val), or train / test (val is then cut from train by ``make_splits``)."""
    usage = dataset.meta.get("official_split")
    if usage is None:
        raise SplitError(
            f"split.kind: {dataset.name} has no official split; use --set split.kind=stratified (or subject_kfold)"
        )
    usage = np.asarray(usage).astype(str)
    values = set(np.unique(usage))
    if values <= {"Training", "PublicTest", "PrivateTest"}:  # FER2013 CSV
        other = "PublicTest" if test == "PrivateTest" else "PrivateTest"
        return {"train": np.flatnonzero(usage == "Training"), "val": np.flatnonzero(usage == other),
                "test": np.flatnonzero(usage == test)}
    if values <= {"train", "test"}:
        return {"train": np.flatnonzero(usage == "train"), "test": np.flatnonzero(usage == "test")}
    raise SplitError(f"split.kind: official split values {sorted(values)} of {dataset.name} are not understood")


def subject_kfold(dataset: FerDataset, k: int, val_fraction: float, seed: int) -> list[Split]:
    """``k`` folds whose test subjects never appear in their train or val parts."""
    if dataset.subjects is None:
        raise SplitError(f"split.kind: subject_kfold needs subject ids, which {dataset.name} does not have; use stratified")
    subjects = np.asarray(dataset.subjects)
    n_subjects = len(np.unique(subjects))
    if n_subjects < k + 1:
        raise SplitError(f"split.k: {k} subject-exclusive folds need more than {k} subjects; {dataset.name} has {n_subjects}")
    folds = []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for rest, test in splitter.split(np.zeros(len(subjects)), dataset.labels, groups=subjects):
        cut = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train_part, val_part = next(cut.split(rest, groups=subjects[rest]))
        folds.append({"train": np.sort(rest[train_part]), "val": np.sort(rest[val_part]), "test": np.sort(test)})
    return folds


def make_splits(dataset: FerDataset, spec) -> list[Split]:
    """The folds of ``spec`` (a ``SplitSpec``) on ``dataset``; raises SplitError when impossible.

    With ``unlabeled_fraction``, the unlabeled part is cut from train first (stratified, as the
    Arsirii protocol hides labels) and val, where the split has none, from the rest: 0.1 then 0.2
    turn RAF-DB's 12,271 training images into 8,834 / 2,209 / 1,228.
    """
    if spec.kind == "subject_kfold":
        folds = subject_kfold(dataset, spec.k, spec.val_fraction, spec.seed)
        folds = [folds[i] for i in spec.fold_ids()]
    elif spec.kind == "official":
        folds = [official_split(dataset, spec.test)]
    else:
        folds = [stratified_split(dataset.labels, spec.ratios, spec.seed)]
    result = []
    for split in folds:
        if spec.unlabeled_fraction:
            train, unlabeled = _stratified_cut(split["train"], dataset.labels, spec.unlabeled_fraction, spec.seed)
            split = {**split, "train": train, "unlabeled": unlabeled}
        if "val" not in split:
            train, val = _stratified_cut(split["train"], dataset.labels, spec.val_fraction, spec.seed)
            split = {**split, "train": train, "val": val}
        result.append({name: np.sort(idx) for name, idx in split.items()})
    return result


def named_index_sets(folds: dict[int, Split]) -> dict[str, np.ndarray]:
    """The index sets a report tabulates: the parts of a single split, or each fold's test part
    (every image is in exactly one k-fold test part)."""
    if len(folds) == 1 and 0 in folds:
        return dict(folds[0])
    return {f"fold{fold} test": split["test"] for fold, split in folds.items()}


def save_splits(path: Path, folds: dict[int, Split]) -> None:
    """Write every fold's index sets; a fold without train, val or test is refused (KeyError)."""
    for fold, split in folds.items():
        missing = [name for name in SPLIT_NAMES if name not in split]
        if missing:
            raise KeyError(f"fold {fold} has no {', '.join(missing)} part")
    buffer = io.BytesIO()
    np.savez(buffer, **{f"fold{fold}_{name}": idx.astype(np.int64) for fold, split in folds.items() for name, idx in split.items()})
    atomic_write_bytes(path, buffer.getvalue())


def load_splits(path: Path) -> dict[int, Split]:
    """Folds by number; also reads the single-split files of earlier versions (keys train/val/test)."""
    folds: dict[int, Split] = {}
    with np.load(path) as stored:
        for key in stored.files:
            fold, _, name = key.partition("_") if key.startswith("fold") else ("fold0", "", key)
            folds.setdefault(int(fold.removeprefix("fold")), {})[name] = stored[key]
    return folds
