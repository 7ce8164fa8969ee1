"""Splits as the papers made them, computed once on the driver and stored with the experiment.

A study has one or more *folds*; each fold is a dict of index arrays ``train``, ``val``, ``test``
and, with ``split.unlabeled_fraction``, ``unlabeled`` (labels hidden from pseudo-labelling).
The k-fold kinds have ``split.k`` folds (``split.folds`` choosing which run); every other kind has a
single fold, 0.

- ``stratified``: two-stage ``train_test_split`` by ``split.ratios`` and ``split.seed``
  (Smelyakov: 70/10/20, random_state 42).
- ``official``: the dataset's own split (FER2013 ``Usage``: Training / PublicTest / PrivateTest,
  ``split.test`` choosing which test part is reported and the other serving as val; RAF-DB and the
  FER2013 folders: train / test, val cut from train by ``split.val_fraction``).
- ``subject_kfold``: ``split.k`` subject-exclusive folds (``StratifiedGroupKFold``), val a
  subject-exclusive ``split.val_fraction`` of each fold's training subjects.
- ``stratified_kfold``: ``split.k`` plain stratified folds (``StratifiedKFold``), val a stratified
  ``split.val_fraction`` of each fold's training part: the thesis's protocol on CK+ peak frames. It
  ignores subjects, so where the data has them ``subject_mixing_warning`` says so.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold, train_test_split

from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.harness.data.checks import plural
from ferbench.harness.data.dataset import FerDataset

SPLIT_NAMES = ("train", "val", "test")

Split = dict[str, np.ndarray]


class SplitError(ValueError):
    """The requested split cannot be made from this dataset; ``str()`` names the key and the fix."""


MORE_IMAGES = "add images"


def more_images(dataset: FerDataset) -> str:
    """The first fix of a dataset too small for its split: for SynthFER, the key that makes more."""
    return "raise data.num_images" if dataset.name == "synthfer" else MORE_IMAGES


def _cut_sizes(n: int, fraction: float) -> tuple[int, int]:
    """(kept, cut) sizes of ``train_test_split(test_size=fraction)`` on ``n`` samples (sklearn rounds the cut up)."""
    cut = math.ceil(fraction * n)
    return n - cut, cut


def _cut_problem(n: int, classes: int, fraction: float) -> str | None:
    """Why a stratified cut of ``fraction`` of ``n`` samples of ``classes`` classes is impossible, or None."""
    keep, cut = _cut_sizes(n, fraction)
    if n == 0:
        return "no class has the 2 images a stratified cut needs"
    if cut < classes:
        return f"{fraction:g} of {n} images is {cut}, fewer than one image for each of the {classes} classes"
    if keep < classes:
        return f"cutting {fraction:g} of {n} images leaves {keep}, fewer than one image for each of the {classes} classes"
    return None


def min_stratified_images(ratios: tuple[float, float, float], classes: int) -> int:
    """The fewest images a two-stage stratified train/val/test split by ``ratios`` accepts for ``classes``
    classes (each with enough images), or 0 when no size up to a million does."""
    train_ratio, val_ratio, test_ratio = ratios
    for n in range(classes, 1_000_001):
        rest = _cut_sizes(n, test_ratio)[0]
        if _cut_problem(n, classes, test_ratio) is None and _cut_problem(rest, classes, val_ratio / (train_ratio + val_ratio)) is None:
            return n
    return 0


def _stratified_cut(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, *,
                    part: str = "test", key: str = "split.ratios", fix: str = MORE_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split`` stratified by label; classes too small to split (< 2 images) stay whole
    on the keep side so that they do not unstratify every other class. A cut too small (or too
    large) to take one image of every class is a ``SplitError`` naming ``key``, the ``part`` cut
    off and the fix, not sklearn's message."""
    counts = np.bincount(labels[indices], minlength=labels.max() + 1 if len(labels) else 0)
    small = np.isin(labels[indices], np.flatnonzero(counts < 2))
    stratified = indices[~small]
    problem = _cut_problem(len(stratified), len(np.unique(labels[stratified])), fraction)
    if problem is not None:
        raise SplitError(
            f"{key}: the stratified {part} part cannot be cut: {problem}; {fix}, change {key}, "
            "or leave classes out with --set data.drop_classes=[...]"
        )
    keep, cut = train_test_split(stratified, test_size=fraction, random_state=seed, stratify=labels[stratified])
    return np.concatenate([keep, indices[small]]), cut


def stratified_split(labels: np.ndarray, ratios: tuple[float, float, float], seed: int, *, fix: str = MORE_IMAGES) -> Split:
    """Two-stage ``train_test_split`` stratified by label, as the Smelyakov protocol did (random_state=seed).

    Test is cut first, then val from the rest; indices are sorted within each split. Too few
    images for ``ratios`` is a ``SplitError`` saying how many the split needs.
    """
    labels = np.asarray(labels)
    train_ratio, val_ratio, test_ratio = ratios
    classes = int((np.bincount(labels) >= 2).sum()) if len(labels) else 0
    needed = min_stratified_images(ratios, classes) if classes else 0
    fix = f"{fix} (train/val/test {'/'.join(f'{r:g}' for r in ratios)} of {classes} classes needs at least {needed} images)" \
        if needed > len(labels) else fix
    rest, test = _stratified_cut(np.arange(len(labels)), labels, test_ratio, seed, part="test", fix=fix)
    train, val = _stratified_cut(rest, labels, val_ratio / (train_ratio + val_ratio), seed, part="val", fix=fix)
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


def stratified_kfold(labels: np.ndarray, k: int, seed: int) -> list[Split]:
    """``k`` stratified folds (train and test; ``make_splits`` cuts val from train): every image is in
    exactly one test part, and each part's class shares follow the dataset's."""
    labels = np.asarray(labels)
    largest = int(np.bincount(labels).max()) if len(labels) else 0
    if largest < k:
        raise SplitError(f"split.k: {k} stratified folds need a class of at least {k} images; the largest has {largest}; "
                         "lower split.k or add images")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [{"train": train, "test": test} for train, test in splitter.split(np.zeros(len(labels)), labels)]


def _all_folds(dataset: FerDataset, spec) -> list[Split]:
    """Every fold the split kind of ``spec`` makes, before any part is cut from train."""
    if spec.kind == "subject_kfold":
        return subject_kfold(dataset, spec.k, spec.val_fraction, spec.seed)
    if spec.kind == "stratified_kfold":
        return stratified_kfold(dataset.labels, spec.k, spec.seed)
    if spec.kind == "official":
        return [official_split(dataset, spec.test)]
    return [stratified_split(dataset.labels, spec.ratios, spec.seed, fix=more_images(dataset))]


def make_splits(dataset: FerDataset, spec) -> list[Split]:
    """The folds of ``spec`` (a ``SplitSpec``) on ``dataset``; raises SplitError when impossible.

    With ``unlabeled_fraction``, the unlabeled part is cut from train first (stratified, as the
    Arsirii protocol hides labels) and val, where the split has none, from the rest: 0.1 then 0.2
    turn RAF-DB's 12,271 training images into 8,834 / 2,209 / 1,228.
    """
    fix = more_images(dataset)
    folds = _all_folds(dataset, spec)
    if spec.kfold:
        folds = [folds[i] for i in spec.fold_ids()]
    result = []
    for split in folds:
        if spec.unlabeled_fraction:
            train, unlabeled = _stratified_cut(split["train"], dataset.labels, spec.unlabeled_fraction, spec.seed,
                                               part="unlabeled", key="split.unlabeled_fraction", fix=fix)
            split = {**split, "train": train, "unlabeled": unlabeled}
        if "val" not in split:
            train, val = _stratified_cut(split["train"], dataset.labels, spec.val_fraction, spec.seed,
                                         part="val", key="split.val_fraction", fix=fix)
            split = {**split, "train": train, "val": val}
        result.append({name: np.sort(idx) for name, idx in split.items()})
    return result


def subject_mixing_text(spec, dataset_name: str, subjects: int | None) -> str | None:
    """The sentence saying that the split of ``spec`` (a ``SplitSpec``) ignores the dataset's ``subjects``
    subject ids, or None where it does not apply. A subject's images on both sides let a model recognise
    the person rather than the expression, so such numbers read higher than subject-exclusive ones and
    compare only with results made the same way (the thesis's CK+ folds are such). SynthFER is left out:
    its identities are generated, and its numbers are compared with no published ones."""
    if not spec.ignores_subjects or subjects is None or dataset_name == "synthfer":
        return None
    return (f"not subject-exclusive: split.kind={spec.kind} ignores the dataset's {subjects} subjects, so images of one "
            "subject sit on both sides of the split (train and test); the numbers are optimistic and comparable only "
            "with results under the same protocol (subject_kfold keeps each subject on one side)")


def subject_mixing_warning(dataset: FerDataset, spec, folds: dict[int, Split]) -> str | None:
    """``subject_mixing_text`` with how many test subjects also have training or val images (the most in a
    fold), or None where the text does not apply or no subject is on both sides."""
    subjects = None if dataset.subjects is None else np.asarray(dataset.subjects)
    text = subject_mixing_text(spec, dataset.name, None if subjects is None else len(np.unique(subjects)))
    if text is None:
        return None
    shared, tested = max((len(np.intersect1d(subjects[split["test"]], subjects[np.concatenate([split["train"], split["val"]])])),
                          len(np.unique(subjects[split["test"]]))) for split in folds.values())
    where = " (the most in a fold)" if len(folds) > 1 else ""
    return f"{text}; {shared} of {plural(tested, 'test subject')}{where} also have train or val images" if shared else None


def _too_small(dataset: FerDataset, spec) -> list[tuple[str, int, str]]:
    """(class, images, why) for each class the split kind cannot place in every part it scores."""
    names, counts = dataset.class_names, dataset.class_counts()
    if spec.kind == "stratified":
        ratios = "/".join(f"{r:g}" for r in spec.ratios)
        return [(names[c], int(n), f"fewer than the 3 a stratified train/val/test {ratios} split needs (one per part)")
                for c, n in enumerate(counts) if n < 3]
    if spec.kind == "stratified_kfold":
        return [(names[c], int(n), f"fewer than the {spec.k} that split.k={spec.k} stratified folds need for every "
                 "fold's test part to hold one") for c, n in enumerate(counts) if n < spec.k]
    if spec.kind == "subject_kfold":
        if dataset.subjects is None:
            return []
        found = []
        for c, n in enumerate(counts):
            subjects = len(np.unique(dataset.subjects[dataset.labels == c]))
            if subjects < spec.k:
                found.append((names[c], int(n), f"images of only {plural(subjects, 'subject')}, fewer than the {spec.k} that "
                              f"split.k={spec.k} subject-exclusive folds need for every fold's test part to hold one"))
        return found
    try:
        official = official_split(dataset, spec.test)
    except SplitError:
        return []  # make_splits says why
    found = []
    for c, n in enumerate(counts):
        in_part = {part: int(dataset.class_counts(idx)[c]) for part, idx in official.items()}
        if in_part["test"] == 0:
            found.append((names[c], int(n), f"none in the dataset's official test part ({spec.test if 'val' in official else 'test'})"))
        elif "val" in official and in_part["val"] == 0:
            found.append((names[c], int(n), "none in the dataset's official val part"))
        elif "val" not in official and in_part["train"] < 2:
            found.append((names[c], int(n), "fewer than the 2 official training images it needs to cut one into val"))
    return found


def _synthfer_size_for(per_class: int) -> int:
    """The smallest ``data.num_images`` whose SynthFER classes (before label noise) all hold ``per_class`` images."""
    from ferbench.harness.data.synthfer import class_counts

    n = 7
    while class_counts(n).min() < per_class:
        n += 1
    return n


def class_shortfalls(dataset: FerDataset, spec) -> list[str]:
    """One line per reason naming every class too small for the split of ``spec`` (a ``SplitSpec``)
    to put it in train, val and test, and what to change; empty when every class fits.

    Checked before splitting: such a class would otherwise stay in train alone, and its val and
    test metrics (shown as 0) would mean nothing.
    """
    by_reason: dict[str, list[tuple[str, int]]] = {}
    for name, images, why in _too_small(dataset, spec):
        by_reason.setdefault(why, []).append((name, images))
    more = more_images(dataset)
    if dataset.name == "synthfer" and spec.kind == "stratified":
        more += f" (from about {_synthfer_size_for(3)} SynthFER has 3 images of every class)"
    change = {"stratified": more, "subject_kfold": f"{more} of more subjects, lower split.k",
              "stratified_kfold": f"{more}, lower split.k",
              "official": f"{more}, use --set split.kind=stratified"}[spec.kind]
    lines = []
    for why, classes in by_reason.items():
        listing = ", ".join(f"{name!r} ({plural(images, 'image')})" for name, images in classes)
        subject = f"class {listing} has" if len(classes) == 1 else f"classes {listing} have"
        them = "it" if len(classes) == 1 else "them"
        drop = f" leave {them} out with --set data.drop_classes=[{','.join(name for name, _ in classes)}]," \
            if len(classes) < dataset.num_classes - 1 else ""
        lines.append(f"split: {subject} {why}; {change},{drop} or run anyway with --set split.allow_missing_classes=true "
                     "(val and test metrics of such a class are then undefined)")
    return lines


def missing_classes(dataset: FerDataset, folds: dict[int, Split]) -> list[dict]:
    """Every (class, part) where a class has no image in the train, val or test part of some fold,
    for the report: ``{"class", "images" (in the dataset), "part", "folds" (fold numbers; None for a
    single split), "counts" (images per part; single split only)}``."""
    found: dict[tuple[int, str], dict] = {}
    single = len(folds) == 1
    for fold, split in folds.items():
        counts = {part: dataset.class_counts(split[part]) for part in SPLIT_NAMES if part in split}
        for part, per_class in counts.items():
            for c in np.flatnonzero(per_class == 0):
                entry = found.setdefault((int(c), part), {
                    "class": dataset.class_names[c], "images": int(dataset.class_counts()[c]), "part": part,
                    "folds": None if single else [],
                    **({"counts": {name: int(n[c]) for name, n in counts.items()}} if single else {}),
                })
                if not single:
                    entry["folds"].append(int(fold))
    return [found[key] for key in sorted(found)]


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
