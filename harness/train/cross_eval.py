"""A finished trial's model scored on the study's extra test sets (``eval.datasets``), Moravčík's cross-dataset
evaluation: the trained model, untouched, predicts another dataset's images, whose labels preflight mapped into
the training classes (``ferbench.harness.study.cross_dataset``).

A function of the trial, not of one trial kind: it reads only the trial's model, evaluation settings, payload,
arm and task, so any trainable whose model returns one score per class (logits, or log-probabilities as a tree of
CNNs gives) calls it after its test evaluation. The scores are the task's test scores on the images kept (not
dropped by the mapping), of the weights the trial's test metrics are of; they are written as the trial artifact
``cross_dataset.json`` and returned as ``cross_<name>_acc`` and ``cross_<name>_macro_f1`` for its last row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ferbench.harness.data.label_mapping import DROPPED
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.layout import CROSS_DATASET_FILE, SELECTED_WEIGHTS_FILE
from ferbench.harness.train.loop import as_tensor, predict

PER_CLASS_KEYS = ("precision", "recall", "f1", "support", "confusion_matrix")


@dataclass
class CrossEvalSet:
    """One extra test set as a trial receives it (in the study payload, once for every trial)."""

    name: str
    images: np.ndarray  # uint8, the training images' shape after the first axis
    labels: dict[int, np.ndarray]  # fold → per image its training class index, or DROPPED (not scored)


def metric_names(name: str) -> tuple[str, str]:
    """The last row's columns of an extra test set: its accuracy and macro F1."""
    return f"cross_{name}_acc", f"cross_{name}_macro_f1"


@contextlib.contextmanager
def _tested_weights(model: torch.nn.Module) -> Iterator[str]:
    """The weights the trial's test metrics are of, in ``model`` for the block: ``selected_weights.pt`` where the
    trial wrote one (a pseudo-labelling arm's chosen round may not be its last), else the model as it is. The
    model's own weights are back afterwards. Yields which weights were used, for the artifact."""
    selected = Path(SELECTED_WEIGHTS_FILE).resolve()
    if not selected.is_file():
        yield "the model at the trial's end"
        return
    kept = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    model.load_state_dict(torch.load(selected, map_location="cpu", weights_only=True))
    try:
        yield SELECTED_WEIGHTS_FILE
    finally:
        model.load_state_dict(kept)


def score_set(trial: Any, eval_set: CrossEvalSet, fold: int) -> dict:
    """One extra test set's record: images scored and dropped, the task's scalars and per-class scores."""
    labels = np.asarray(eval_set.labels[fold], dtype=np.int64)
    kept = np.flatnonzero(labels != DROPPED)
    record = {"name": eval_set.name, "fold": fold, "n_images": int(len(kept)), "n_dropped": int(len(labels) - len(kept))}
    if not len(kept):
        return {**record, "scalars": {}, "per_class": {}}
    logits = predict(trial.model, as_tensor(eval_set.images), torch.from_numpy(kept), **trial.eval_kwargs)
    scalars, per_class = trial.task.scores(logits, torch.from_numpy(labels[kept]), len(trial.payload.class_names))
    return {**record, "scalars": scalars, "per_class": {key: per_class[key] for key in PER_CLASS_KEYS}}


def evaluate_extra_datasets(trial: Any) -> dict[str, float]:
    """Score the trial's tested model on every extra test set of its payload; write ``cross_dataset.json`` in the
    trial's folder (the working directory Tune gives it) and return the last row's ``cross_<name>_*`` columns
    ({} when the study has no extra test set)."""
    eval_sets = getattr(trial.payload, "eval_sets", None) or []
    if not eval_sets:
        return {}
    fold = trial.arm.get("fold", 0)
    with _tested_weights(trial.model) as weights:
        records = [score_set(trial, eval_set, fold) for eval_set in eval_sets]
    atomic_write_json(Path(CROSS_DATASET_FILE).resolve(), {
        "class_names": list(trial.payload.class_names), "weights": weights, "datasets": records,
    })
    metrics = {}
    for record in records:
        acc, macro_f1 = metric_names(record["name"])
        metrics[acc] = record["scalars"].get("acc", float("nan"))
        metrics[macro_f1] = record["scalars"].get("macro_f1", float("nan"))
    return metrics
