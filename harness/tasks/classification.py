"""Single-label classification, the task of every study today: one emotion class per image.

Softmax cross-entropy (optionally class-weighted); accuracy as the per-epoch figure MCR/MOFR use;
test scores from torchmetrics (the scalars a trial reports and the per-class precision / recall /
F1 and confusion matrix it keeps as artifacts). One ``class_scores`` so that the final test
evaluation and every pseudo-labelling round are scored the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ferbench.harness.train.test_artifacts import write_test_artifacts


def accuracy_and_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[float, float]:
    return float((logits.argmax(1) == targets).float().mean()), float(F.cross_entropy(logits, targets, weight=weight))


class SingleLabelClassification:
    """The task interface the trial loop calls (``ferbench.harness.tasks.registry``)."""

    name = "classification"

    def __init__(self, spec=None):
        self.spec = spec

    def targets(self, dataset) -> tuple[np.ndarray, tuple[str, ...]]:
        """(what each image's target is, the names of the head's outputs): the emotion class indices."""
        return dataset.labels, dataset.class_names

    def output_size(self, class_names: tuple[str, ...]) -> int:
        """The head's outputs: one logit per class."""
        return len(class_names)

    def split_warnings(self, targets: np.ndarray, names: tuple[str, ...], splits: dict[int, dict[str, np.ndarray]]) -> list[str]:
        """What the split leaves the task short of, beyond empty classes (checked for every task in preflight)."""
        return []

    def loss_weights(self, train_targets: torch.Tensor) -> torch.Tensor | None:
        """The task's own loss weights from the training targets (none: a variant may weight classes)."""
        return None

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss, always in fp32."""
        return F.cross_entropy(logits.float(), targets, weight=weight)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many of a batch's predictions are right (a device tensor: no synchronisation)."""
        return (logits.argmax(1) == targets).sum()

    def accuracy_and_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[float, float]:
        """(the per-epoch figure MCR/MOFR use, the loss) of one evaluation."""
        return accuracy_and_loss(logits, targets, weight)

    def predicted(self, probabilities: np.ndarray, names: tuple[str, ...], thresholds: list[float] | None = None) -> list[str]:
        """What each row of probabilities predicts, by name (``ferbench predict``): the most probable class."""
        return [names[int(row.argmax())] for row in probabilities]

    def epoch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Per-epoch validation metrics beyond val_acc and val_loss (none)."""
        return {}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def scores(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
               validation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[dict, dict]:
        """(test scalars, per-class scores). ``validation`` (the tested model's val logits and targets, on
        demand) is not needed: argmax has no threshold to choose."""
        return class_scores(logits, targets, num_classes)

    def write_test_artifacts(self, round_no: int | None, indices: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                             class_names: tuple[str, ...], per_class: dict) -> None:
        write_test_artifacts(round_no, indices, targets, self.probabilities(logits), class_names, per_class)


def class_scores(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[dict, dict]:
    """(scalars, per_class): acc, loss, macro/weighted F1, balanced acc; per-class precision,
    recall, F1, support and the confusion matrix (rows true, columns predicted), as lists."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    per_class = {
        name: function(logits, targets, num_classes=num_classes, average=None, zero_division=0).tolist()
        for name, function in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score))
    }
    per_class["support"] = torch.bincount(targets, minlength=num_classes).tolist()
    per_class["confusion_matrix"] = multiclass_confusion_matrix(logits, targets, num_classes=num_classes).tolist()
    acc, loss = accuracy_and_loss(logits, targets)
    scalars = {
        "acc": acc,
        "loss": loss,
        "macro_f1": float(multiclass_f1_score(logits, targets, num_classes=num_classes, average="macro")),
        "weighted_f1": float(multiclass_f1_score(logits, targets, num_classes=num_classes, average="weighted")),
        "balanced_acc": float(multiclass_accuracy(logits, targets, num_classes=num_classes, average="macro")),
    }
    return scalars, per_class
