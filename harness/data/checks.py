"""Leakage and quality checks of a dataset and its splits, and the summary ``ferbench data inspect`` prints.

Why: public FER sets carry exact duplicates (FER2013 has the same face in Training and PrivateTest,
sometimes with different labels), blank images and files a loader had to skip or resize. A test
score measured on images the model trained on is not a test score, so these are found before any
trial runs and shown in the report. All functions are pure; images are hashed once (blake2b over
each image's bytes), which takes about 0.2 s for FER2013's 35,887 images.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from ferbench.harness.data.dataset import FerDataset

Splits = dict[str, np.ndarray]

EXAMPLES = 5  # duplicate groups / constant images listed in a summary
LISTED = 20  # skipped / resized files listed by the CLI and the report before "… and N more"
GROUP_MEMBERS = 10  # members listed per example group (FER2013's blank images form one large group)
TRAINING_SPLITS = frozenset({"train", "training", "unlabeled"})  # lower-cased; everything else is evaluation


def image_ids(images: np.ndarray) -> np.ndarray:
    """One int per image, equal exactly for byte-identical images (128-bit blake2b of the pixels)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    keys = np.array([hashlib.blake2b(row.data, digest_size=16).digest() for row in flat], dtype="S16")
    return np.unique(keys, return_inverse=True)[1].reshape(-1) if len(keys) else np.zeros(0, dtype=np.int64)


def exact_duplicates(images: np.ndarray) -> list[np.ndarray]:
    """Groups (sorted int64 indices, two or more each) of byte-identical images, ordered by first index."""
    ids = image_ids(images)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    groups = [group for group in np.split(order.astype(np.int64), starts[1:]) if len(group) > 1]
    return sorted(groups, key=lambda group: int(group[0]))


def constant_images(images: np.ndarray) -> np.ndarray:
    """Indices of images whose pixels all have one value (blank, black or white frames)."""
    flat = np.asarray(images).reshape(len(images), -1)
    return np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)) if flat.size else np.zeros(0, dtype=np.int64)


def split_of(n: int, splits: Splits) -> np.ndarray:
    """The split name of each of ``n`` samples (None where a sample is in no split)."""
    names = np.full(n, None, dtype=object)
    for name, indices in splits.items():
        names[np.asarray(indices, dtype=np.int64)] = name
    return names


def official_splits(dataset: FerDataset) -> Splits | None:
    """The dataset's own split (``meta["official_split"]``) as index arrays, in order of appearance."""
    usage = dataset.meta.get("official_split")
    if usage is None:
        usage = dataset.meta.get("usage")  # the FER2013 CSV loader's name before ``official_split``
    if usage is None:
        return None
    usage = np.asarray(usage).astype(str)
    names = usage[np.sort(np.unique(usage, return_index=True)[1])]
    return {str(name): np.flatnonzero(usage == name) for name in names}


def class_counts_table(dataset: FerDataset, splits: Splits | None = None) -> pd.DataFrame:
    """Images per class (rows: class names, then ``total``) overall (``all``) and per split present."""
    columns = {"all": np.arange(len(dataset))} | {name: np.asarray(idx, dtype=np.int64) for name, idx in (splits or {}).items()}
    table = pd.DataFrame({name: dataset.class_counts(idx) for name, idx in columns.items()}, index=list(dataset.class_names))
    table.loc["total"] = table.sum()
    table.index.name = "class"
    return table.astype(int)


def counts_with_shares(class_counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """``inspect``'s class counts as text cells ``count (share of its column)``, for the CLI and the report."""
    counts = pd.DataFrame(class_counts)
    shares = 100 * counts / counts.loc["total"].where(counts.loc["total"] > 0, 1)
    return counts.apply(lambda col: [f"{n:,} ({s:.1f}%)" for n, s in zip(col, shares[col.name])]).rename_axis("class")


def is_leak(split_names: list[str]) -> bool:
    """Whether a group of identical images sits both in a training split and in an evaluation split."""
    training = [name.lower() in TRAINING_SPLITS for name in split_names]
    return any(training) and not all(training)


def cross_split_duplicates(dataset: FerDataset, splits: Splits, *,
                           groups: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Duplicate groups whose members lie in more than one split, each as ``{"indices", "splits"
    (per member), "labels" (class name per member), "split_names" (distinct, in split order),
    "conflicting_labels", "leak" (training and evaluation splits share the image)}``.
    ``groups``: ``exact_duplicates(dataset.images)`` when the caller already has it."""
    where = split_of(len(dataset), splits)
    order = {name: rank for rank, name in enumerate(splits)}
    found = []
    for group in exact_duplicates(dataset.images) if groups is None else groups:
        names = sorted({where[i] for i in group if where[i] is not None}, key=order.__getitem__)
        if len(names) > 1:
            labels = dataset.labels[group]
            found.append({
                "indices": group.tolist(), "splits": [where[i] for i in group],
                "labels": [dataset.class_names[label] for label in labels], "split_names": names,
                "conflicting_labels": bool(len(np.unique(labels)) > 1), "leak": is_leak(names),
            })
    return found


def duplicate_training_indices(dataset: FerDataset, splits: Splits) -> np.ndarray:
    """Sorted train indices whose image is also in val or test: what ``data.drop_duplicates`` removes."""
    train = np.asarray(splits["train"], dtype=np.int64)
    held_out = [np.asarray(splits[name], dtype=np.int64) for name in ("val", "test") if name in splits]
    if not held_out or not len(train):
        return np.zeros(0, dtype=np.int64)
    ids = image_ids(dataset.images)
    return np.sort(train[np.isin(ids[train], ids[np.concatenate(held_out)])])


def sample_ref(dataset: FerDataset, index: int, where: np.ndarray | None = None) -> dict[str, Any]:
    """A JSON-ready pointer to one sample: index, source file / CSV line (None if unknown), label, split."""
    sources = getattr(dataset, "sources", None)
    ref = {"index": int(index), "source": None if sources is None else str(sources[index]),
           "label": dataset.class_names[int(dataset.labels[index])]}
    if where is not None:
        ref["split"] = where[index]
    return ref


def describe_sample(ref: dict[str, Any]) -> str:
    """``source (label, split)`` for text and Markdown listings; ``#index`` when the source is unknown."""
    details = ", ".join(str(ref[key]) for key in ("label", "split") if ref.get(key) is not None)
    return f"{ref['source'] or '#' + str(ref['index'])} ({details})"


def _group_summary(dataset: FerDataset, group: np.ndarray, where: np.ndarray) -> dict[str, Any]:
    return {"size": int(len(group)), "members": [sample_ref(dataset, i, where) for i in group[:GROUP_MEMBERS]]}


def _by_splits(groups: list[dict[str, Any]]) -> dict[str, int]:
    """Number of groups per combination of splits, e.g. ``{"train+test": 3}``."""
    combos: dict[str, int] = {}
    for group in groups:
        key = "+".join(group["split_names"])
        combos[key] = combos.get(key, 0) + 1
    return combos


def _cross_split_summary(dataset: FerDataset, cross: list[dict[str, Any]], where: np.ndarray) -> dict[str, Any]:
    leaks = [group for group in cross if group["leak"]]
    shown = sorted(cross, key=lambda group: (not group["leak"], not group["conflicting_labels"]))[:EXAMPLES]
    return {
        "groups": len(cross), "images": sum(len(group["indices"]) for group in cross), "by_splits": _by_splits(cross),
        "leak_groups": len(leaks), "leak_images": sum(len(group["indices"]) for group in leaks),
        "leak_by_splits": _by_splits(leaks), "conflicting_labels": sum(group["conflicting_labels"] for group in cross),
        "examples": [{**_group_summary(dataset, np.asarray(group["indices"]), where),
                      **{key: group[key] for key in ("split_names", "conflicting_labels", "leak")}}
                     for group in shown],
    }


def _warnings(cross: dict[str, Any]) -> list[str]:
    """The loud lines the CLI and the report print when evaluation images also appear in training."""
    if not cross["leak_groups"]:
        return []
    pairs = ", ".join(f"{combo}: {count}" for combo, count in cross["leak_by_splits"].items())
    lines = [f"{cross['leak_images']} images in {cross['leak_groups']} group(s) of identical images appear in both "
             f"training and evaluation splits (groups by splits: {pairs}), so evaluation scores are inflated; "
             "drop the training copies with --set data.drop_duplicates=true"]
    if cross["conflicting_labels"]:
        lines.append(f"{cross['conflicting_labels']} cross-split duplicate group(s) carry conflicting labels")
    return lines


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe_missing(entry: dict) -> str:
    """One line of ``missing_classes``: which class lacks which part, and why that matters."""
    where = (f"in fold(s) {', '.join(map(str, entry['folds']))}" if entry["folds"] is not None
             else "(" + ", ".join(f"{part} {n}" for part, n in entry["counts"].items()) + ")")
    effect = {"test": "its test F1, precision and recall are undefined (reported as 0)",
              "val": "val accuracy and loss, and the epochs or rounds chosen on them, do not cover it",
              "train": "the model never sees it"}[entry["part"]]
    return (f"class {entry['class']!r} ({plural(entry['images'], 'image')}) has no {entry['part']} image "
            f"{where}: {effect}")


def dropped_classes(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Classes the dataset holds on disk but the study leaves out, each ``{"class", "images", "reason"}``:
    ``data.drop_classes``, ``data.contempt: drop``, and classes whose every image was skipped."""
    dropped = [{"class": name, "images": int(n), "reason": "left out with data.drop_classes"}
               for name, n in meta.get("dropped_classes", {}).items()]
    if meta.get("contempt_dropped"):
        dropped.append({"class": "contempt", "images": int(meta["contempt_dropped"]), "reason": "data.contempt: drop"})
    dropped += [{"class": name, "images": int(n), "reason": "no image could be used (all skipped; see the skipped files)"}
                for name, n in meta.get("vanished_classes", {}).items()]
    return dropped


def _class_warnings(meta: dict[str, Any]) -> list[str]:
    """Loud lines for classes that vanished because none of their images could be read."""
    return [f"class {name!r} is not in the dataset: none of its {n} image file(s) could be used (skipped files listed below)"
            for name, n in meta.get("vanished_classes", {}).items()]


def inspect(dataset: FerDataset, splits: Splits | None = None) -> dict[str, Any]:
    """A JSON-serialisable summary of ``dataset``: size, classes per split (``splits``, else the
    official split if the dataset has one), subjects, duplicates within and across splits, constant
    images, the files the loader skipped, resized, converted to the dataset's colour mode or ignored
    (not images), and the classes left out."""
    kind = "given" if splits is not None else "official"
    splits = splits if splits is not None else official_splits(dataset)
    if splits is None:
        kind, splits = None, {}
    where = split_of(len(dataset), splits)
    groups = exact_duplicates(dataset.images)
    cross = _cross_split_summary(dataset, cross_split_duplicates(dataset, splits, groups=groups), where) if splits else None
    constant = constant_images(dataset.images)
    flat_constant = np.asarray(dataset.images).reshape(len(dataset), -1)[constant[:EXAMPLES], 0]
    meta = dataset.meta
    return {
        "name": dataset.name, "format": meta.get("format", dataset.name),
        "source": None if meta.get("source") is None else str(meta["source"]),
        "images": len(dataset), "image_size": list(dataset.image_size), "channels": dataset.channels,
        "classes": list(dataset.class_names), "split_kind": kind, "splits": list(splits),
        "class_counts": {column: {str(k): int(v) for k, v in counts.items()}
                         for column, counts in class_counts_table(dataset, splits).items()},
        "subjects": None if dataset.subjects is None else int(len(np.unique(dataset.subjects))),
        "duplicates": {
            "groups": len(groups), "images": sum(len(group) for group in groups),
            "redundant": sum(len(group) - 1 for group in groups),
            "examples": [_group_summary(dataset, group, where) for group in groups[:EXAMPLES]],
        },
        "cross_split_duplicates": cross,
        "constant_images": {
            "count": int(len(constant)),
            "examples": [{**sample_ref(dataset, i, where), "value": int(value)} for i, value in zip(constant, flat_constant)],
        },
        "skipped": [{key: str(value) for key, value in item.items()} for item in meta.get("skipped", [])],
        "resized": [str(path) for path in meta.get("resized", [])],
        "converted": _converted(meta.get("converted")),
        "ignored": [str(path) for path in meta.get("ignored", [])],
        "dropped_classes": dropped_classes(meta),
        "warnings": _class_warnings(meta) + (_warnings(cross) if cross else []),
    }


def _converted(converted: dict[str, Any] | None) -> dict[str, Any]:
    """``{"to": "grayscale" | "rgb" | None, "paths": [...]}``: files brought to the dataset's colour mode."""
    converted = converted or {}
    return {"to": converted.get("to"), "paths": [str(path) for path in converted.get("paths", [])]}


def label_statistics(action_units: np.ndarray, names: tuple[str, ...] | list[str],
                     index_sets: dict[str, np.ndarray]) -> dict:
    """The label facts of a multi-label dataset that the report's Data section shows (how imbalanced the
    labels are, which occur together: Arsirii et al.'s Table 1 for DISFA), counted once here because the
    report renders without the dataset: per part (``all``, then each of ``index_sets``) the images, each
    label's positives and the images with no label active; and over all images the K × K co-occurrence
    counts (images with both labels active; the diagonal holds each label's positives)."""
    labels = np.asarray(action_units, dtype=np.int64)
    parts = {"all": np.arange(len(labels))} | {name: np.asarray(idx, dtype=np.int64) for name, idx in index_sets.items()}
    return {
        "names": list(names),
        "images": {part: int(len(idx)) for part, idx in parts.items()},
        "positives": {part: labels[idx].sum(axis=0).tolist() for part, idx in parts.items()},
        "no_label": {part: int((labels[idx].sum(axis=1) == 0).sum()) for part, idx in parts.items()},
        "co_occurrence": (labels.T @ labels).tolist(),
    }
