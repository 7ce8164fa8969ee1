"""Cross-dataset evaluation on the driver (``eval.datasets``): each extra test set read once, brought to the
training data's form, and its labels mapped into the training classes for every fold, before any trial.

Why here and not in the trials: reading, resizing and the mass-centre search are the same for every arm of a
fold, and a problem (a missing folder, a map naming no training class) must stop the study in preflight, not
after the first arm has trained. The mapping of a fold uses that fold's training part only
(``ferbench.harness.data.label_mapping``); it is recorded in ``ferbench/cross_dataset_mapping.json`` for the
report, and the images with their per-fold labels travel to the trials in the study payload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.label_mapping import DROPPED, LabelMapping, map_labels
from ferbench.harness.data.loaders import DataError, check_data_source, load_dataset
from ferbench.harness.data.unlabeled_pool import in_training_form
from ferbench.harness.spec import EvalDatasetSpec, StudySpec
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.train.cross_eval import CrossEvalSet

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One extra test set in the training data's form, with its labels mapped per fold."""

    index: int  # its place in eval.datasets, for the keys problems name
    spec: EvalDatasetSpec
    images: np.ndarray  # uint8, the training images' shape after the first axis
    labels: np.ndarray  # its own class indices, into ``class_names``
    class_names: tuple[str, ...]
    notes: dict  # format, source, fingerprint, how the images were brought to the training data's form
    sources: np.ndarray | None = None  # where each image came from (file paths), when the loader knows
    mappings: dict[int, LabelMapping] = field(default_factory=dict)  # fold → its labels in the training classes

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        return f"eval.datasets.{self.index}"


def _key_line(index: int, message: str) -> str:
    """A data problem of eval dataset ``index`` under its own key (``data.path: …`` → ``eval.datasets.0.data.path: …``)."""
    key = f"eval.datasets.{index}"
    message = message.replace("--set data.", f"{key}.data.")  # the loaders' fixes name the study's data keys
    return f"{key}.{message}" if message.startswith("data.") else f"{key}.data: {message}"


def eval_source_problems(spec: StudySpec) -> list[str]:
    """Preflight stage 1 (milliseconds, nothing decoded): each extra test set's options hold and its path opens."""
    return [_key_line(index, line) for index, entry in enumerate(spec.eval.datasets) for line in check_data_source(entry.data)]


def _map_problems(index: int, entry: EvalDatasetSpec, own: tuple[str, ...], training: tuple[str, ...]) -> list[str]:
    """``map`` names a class of this dataset on the left and a training class on the right; known only once both
    datasets are read."""
    key, problems = f"eval.datasets.{index}.map", []
    for name, target in entry.map.items():
        if name not in own:
            problems.append(f"{key}.{name}: {entry.name} has no class {name} (its classes: {', '.join(own)}); remove it from map")
        if target not in training:
            problems.append(f"{key}.{name}: {target} is not a class of the training data (its classes: "
                            f"{', '.join(training)}); map {name} to one of them")
    return problems


def load_eval_set(index: int, entry: EvalDatasetSpec, dataset: FerDataset) -> EvalSet:
    """Read extra test set ``index`` (from the dataset cache, like the study's data) and bring its images to the
    training data's size and channels. Raises ``DataError`` naming its key."""
    try:
        loaded = load_dataset(entry.data)
    except DataError as err:
        raise DataError(_key_line(index, str(err))) from None
    images, form = in_training_form(loaded.images, dataset.images.shape[1:])
    notes = {"format": loaded.meta.get("format", loaded.name), "source": loaded.meta.get("source", "SynthFER"),
             "fingerprint_sha256": loaded.fingerprint(), "image_size": list(loaded.image_size),
             "channels": loaded.channels, **form, "skipped": len(loaded.meta.get("skipped", []))}
    return EvalSet(index, entry, images, loaded.labels, loaded.class_names, notes, loaded.sources)


def load_eval_sets(spec: StudySpec, dataset: FerDataset) -> tuple[list[EvalSet], list[str]]:
    """Preflight stage 2: (the extra test sets read, the problems): each read and its ``map`` checked against
    both datasets' classes. Every set is tried, so one message lists every problem."""
    sets, problems = [], []
    for index, entry in enumerate(spec.eval.datasets):
        try:
            eval_set = load_eval_set(index, entry, dataset)
        except (DataError, ValueError) as err:
            problems.append(str(err) if str(err).startswith("eval.datasets.") else _key_line(index, str(err)))
            continue
        except OSError as err:
            problems.append(_key_line(index, f"{err.filename or entry.data.path}: cannot be read ({err.strerror or err})"))
            continue
        found = _map_problems(index, entry, eval_set.class_names, dataset.class_names)
        problems += found
        if not found:
            sets.append(eval_set)
    return sets, problems


def map_eval_sets(spec: StudySpec, dataset: FerDataset, splits: dict[int, dict[str, np.ndarray]],
                  sets: list[EvalSet]) -> list[str]:
    """Each set's labels in the training classes for every fold (mass centres from the fold's training part);
    the problems: a set of which nothing would be scored."""
    problems = []
    for eval_set in sets:
        entry = eval_set.spec
        if entry.unmapped == "mass_centre":  # seconds to minutes: every pair of up to max_images per class and fold
            log.info("eval %s: searching mass centres (%s difference) in the training part of %d fold(s)", entry.name,
                     entry.mass_centre.distance, len(splits))
        for fold, split in splits.items():
            train = np.asarray(split["train"], dtype=np.int64)
            eval_set.mappings[fold] = map_labels(
                eval_set.labels, eval_set.class_names, dataset.class_names, entry.map, entry.unmapped,
                target_images=eval_set.images, source_images=dataset.images[train], source_labels=dataset.labels[train],
                distance=entry.mass_centre.distance, remap=entry.mass_centre.remap,
                max_images=entry.mass_centre.max_images, seed=spec.split.seed,
            )
        first = next(iter(eval_set.mappings.values()), None)
        if first is not None and (first.labels == DROPPED).all():
            problems.append(
                f"{eval_set.key}: none of {entry.name}'s classes ({', '.join(eval_set.class_names)}) is a class of the "
                f"training data ({', '.join(dataset.class_names)}), so every image would be dropped; map them with "
                f"{eval_set.key}.map (e.g. {{contempt: happy}}), or set {eval_set.key}.unmapped: mass_centre")
    return problems


def prepare_eval_sets(spec: StudySpec, dataset: FerDataset,
                      splits: dict[int, dict[str, np.ndarray]] | None) -> tuple[list[EvalSet], list[str]]:
    """Preflight stage 2 for ``eval.datasets``: read, checked, and (when the splits are known) mapped."""
    if not spec.eval.datasets:
        return [], []
    sets, problems = load_eval_sets(spec, dataset)
    if splits is not None and not problems:
        problems += map_eval_sets(spec, dataset, splits, sets)
    return sets, problems


def payload_sets(sets: list[EvalSet]) -> list[CrossEvalSet]:
    """What the trials get: the images and each fold's mapped labels."""
    return [CrossEvalSet(s.name, s.images, {fold: m.labels for fold, m in s.mappings.items()}) for s in sets]


def _medoid_entry(dataset: FerDataset, train: np.ndarray, position: int) -> dict:
    index = int(train[position])
    source = str(dataset.sources[index]) if dataset.sources is not None else None
    return {"index": index, **({"source": source} if source else {})}


def mapping_record(spec: StudySpec, dataset: FerDataset, splits: dict[int, dict[str, np.ndarray]],
                   sets: list[EvalSet]) -> dict:
    """``ferbench/cross_dataset_mapping.json``: per extra test set what it is, how its labels were mapped, and
    per fold every image's training class (-1: dropped), the counts per way of labelling, the mapping's
    confusion (rows its own classes, columns the training classes and "dropped") and the mass centres (index
    into the training data, and file)."""
    record = {"training_classes": list(dataset.class_names), "datasets": []}
    for eval_set in sets:
        entry = eval_set.spec
        folds = {}
        for fold, mapping in eval_set.mappings.items():
            train = np.asarray(splits[fold]["train"], dtype=np.int64)
            folds[str(fold)] = {
                "labels": mapping.labels.tolist(), "how": mapping.counts(),
                "confusion": mapping.confusion(eval_set.labels, len(eval_set.class_names), len(dataset.class_names)).tolist(),
                "mass_centres": {dataset.class_names[c]: _medoid_entry(dataset, train, p) for c, p in mapping.medoids.items()},
            }
        record["datasets"].append({
            "name": entry.name, **eval_set.notes, "class_names": list(eval_set.class_names),
            "class_counts": np.bincount(eval_set.labels, minlength=len(eval_set.class_names)).tolist(),
            "map": entry.map, "unmapped": entry.unmapped,
            "mass_centre": entry.mass_centre.model_dump() if entry.unmapped == "mass_centre" else None,
            "sample_seed": spec.split.seed, "folds": folds,
        })
    return record


def write_mapping_record(path: Path, spec: StudySpec, dataset: FerDataset, splits: dict[int, dict[str, np.ndarray]],
                         sets: list[EvalSet]) -> None:
    atomic_write_json(path, mapping_record(spec, dataset, splits, sets))


def describe_eval_sets(sets: list[EvalSet]) -> list[str]:
    """The study plan's lines on the extra test sets: images, form, and what the mapping scores and drops."""
    lines = []
    for eval_set in sets:
        notes, mapping = eval_set.notes, next(iter(eval_set.mappings.values()), None)
        counts = mapping.counts() if mapping is not None else {}
        size = "×".join(map(str, notes["resized_to"]))
        lines.append(f"  eval {eval_set.name}: {notes['images']} images from {notes['source']} ({notes['resized']} resized to "
                     f"{size}, {notes['converted']} converted to {notes['converted_to']}); scored "
                     f"{notes['images'] - counts.get('dropped', 0)}, dropped {counts.get('dropped', 0)}"
                     + (f", {counts['mass_centre']} labelled by mass centre" if counts.get("mass_centre") else ""))
    return lines
