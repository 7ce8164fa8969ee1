"""Multi-label classification: several labels per image at once, e.g. facial action units (Arsirii et
al. 2023 on DISFA), or any 0/1 label set of a multi-label CSV.

One logit per label and a sigmoid each; the loss is ``train.loss`` (BCE, class-weighted BCE, LSEP or
1 − P·R, ``ferbench.harness.tasks.au_losses``). The per-epoch ``*_acc`` is Keras's ``binary_accuracy``
(the share of correct label decisions at 0.5): it is what Keras reports for this model, it is a
running average over batches like every other ``train_acc``, and it exists before training, so MCR
and MOFR are defined as for emotions. It is dominated by absent labels on imbalanced data, so each
epoch also reports ``val_f1_macro`` (the mean F1 over labels at 0.5), and the test headline is
``test_macro_f1`` at the study's thresholds (``multilabel.threshold``: 0.5, or per label the F1-best
threshold on validation, applied unchanged to test).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ferbench.harness.tasks.au_losses import LOSSES, positive_weights
from ferbench.harness.tasks.au_metrics import best_thresholds, correct_label_share, label_scores
from ferbench.harness.train.test_artifacts import write_test_artifacts

DEFAULT_LOSS = "bce"
FIXED, VAL_F1 = "fixed", "val_f1"


class MultiLabelClassification:
    """The task interface the trial loop calls (``ferbench.harness.tasks.registry``)."""

    name = "multilabel"

    def __init__(self, spec=None):
        self.spec = spec
        loss = spec.train.loss if spec is not None else "auto"
        self.loss_name = DEFAULT_LOSS if loss == "auto" else loss
        self.threshold = spec.multilabel.threshold if spec is not None else 0.5

    def targets(self, dataset) -> tuple[np.ndarray, tuple[str, ...]]:
        """(the 0/1 label matrix, the label names): the dataset's action units."""
        if dataset.action_units is None:
            raise ValueError(f"task multilabel: dataset {dataset.name} has no multi-label annotations (action units); "
                             "use data.format=disfa, multilabel_csv or synthfer, or task=classification")
        return dataset.action_units, tuple(dataset.au_names)

    def split_warnings(self, targets: np.ndarray, names: tuple[str, ...], splits: dict[int, dict[str, np.ndarray]]) -> list[str]:
        """Labels with no positive image in a part: nothing to learn them from (train), or an F1 of 0 by
        definition (val, test)."""
        lines = []
        for fold, split in splits.items():
            where = f"fold {fold}'s " if len(splits) > 1 else "the "
            for part in ("train", "val", "test"):
                absent = [name for name, count in zip(names, targets[split[part]].sum(0)) if count == 0]
                if absent:
                    lines.append(f"label(s) {', '.join(absent)} have no positive image in {where}{part} part"
                                 + ("; nothing to learn them from" if part == "train" else "; their F1 there is 0 by definition"))
        return lines

    def output_size(self, class_names: tuple[str, ...]) -> int:
        """The head's outputs: one logit per label."""
        return len(class_names)

    def loss_weights(self, train_targets: torch.Tensor) -> torch.Tensor | None:
        """bce_weighted: each label's positives weighted by its negatives/positives in the training part."""
        return positive_weights(train_targets.float()) if self.loss_name == "bce_weighted" else None

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The loss, always in fp32. Without ``weight`` (validation and test), bce_weighted is plain BCE, as a
        class-weighted cross-entropy's val_loss is unweighted."""
        name = "bce" if self.loss_name == "bce_weighted" and weight is None else self.loss_name
        return LOSSES[name](logits.float(), targets.float(), weight)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's correct label decisions at 0.5, in images (Σ over images of the share of labels right)."""
        return correct_label_share(logits, targets)

    def accuracy_and_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[float, float]:
        """(binary accuracy at 0.5, the loss) of one evaluation."""
        return float(correct_label_share(logits, targets)) / max(len(targets), 1), float(self.loss(logits, targets, weight))

    def epoch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``val_f1_macro``: the mean F1 over labels at 0.5."""
        probabilities = self.probabilities(logits).numpy()
        scalars, _ = label_scores(probabilities, targets.numpy(), np.full(probabilities.shape[1], 0.5))
        return {"val_f1_macro": scalars["macro_f1"]}

    def predicted(self, probabilities: np.ndarray, names: tuple[str, ...], thresholds: list[float] | None = None) -> list[str]:
        """What each row predicts (``ferbench predict``): the labels at or above their thresholds, joined by
        ``+``, or ``none``."""
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(names))
        return ["+".join(name for name, present in zip(names, row >= cut) if present) or "none" for row in probabilities]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def thresholds(self, num_labels: int, validation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None) -> np.ndarray:
        """The decision threshold per label: the study's fixed one, or the F1-best on the tested model's validation predictions."""
        if self.threshold != VAL_F1:
            return np.full(num_labels, float(self.threshold))
        if validation is None:
            raise ValueError("multilabel.threshold=val_f1 needs the validation predictions of the tested model")
        val_logits, val_targets = validation()
        return best_thresholds(self.probabilities(val_logits).numpy(), val_targets.numpy())

    def scores(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
               validation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[dict, dict]:
        """(test scalars, per-label scores with the thresholds used and the rule that chose them)."""
        thresholds = self.thresholds(num_classes, validation)
        scalars, per_label = label_scores(self.probabilities(logits).numpy(), targets.numpy(), thresholds)
        scalars["loss"] = float(self.loss(logits, targets))
        per_label["threshold_rule"] = VAL_F1 if self.threshold == VAL_F1 else FIXED
        return scalars, per_label

    def write_test_artifacts(self, round_no: int | None, indices: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                             class_names: tuple[str, ...], per_class: dict) -> None:
        thresholds = np.asarray(per_class["threshold"], dtype=np.float32)
        write_test_artifacts(round_no, indices, targets, self.probabilities(logits), class_names, per_class,
                             thresholds=thresholds)
