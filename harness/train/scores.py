"""Classification scores of one evaluation (torchmetrics): the scalars a trial reports and the
per-class precision / recall / F1 and confusion matrix it keeps as artifacts.

One function so that the final test evaluation and every pseudo-labelling round are scored the
same way.
"""

from __future__ import annotations

import torch

from ferbench.harness.train.loop import accuracy_and_loss


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
