"""Multi-label (action-unit) scores: probabilities (N, K) against 0/1 targets (N, K), numpy in, numpy out.

A label is predicted present when its probability is >= its threshold (scikit-learn's convention for
precision-recall curves, so a threshold taken from ``best_thresholds`` reproduces the F1 it was chosen for).
Precision, recall and F1 follow scikit-learn's ``zero_division=0``: an undefined quotient is 0. The headline
figure is the macro F1, the paper's "Avg. F1" over AUs (Arsirii & Petrosiuk 2023, eqs. 2-4).
"""

from __future__ import annotations

import numpy as np
import torch


def correct_label_share(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of (correct label decisions at probability > 0.5) / K: a 0-d float tensor on the logits' device.

    Summed over batches and divided by the number of images this is Keras's ``binary_accuracy`` (the
    per-epoch ``*_acc`` MCR/MOFR report), hence its strict ``> 0.5``; no host synchronisation.
    """
    predicted = torch.sigmoid(logits.float()) > 0.5
    correct = predicted == (targets.to(logits.device) > 0)
    return correct.float().sum() / logits.shape[1]


def _divide(numerator, denominator):
    """numerator / denominator elementwise, 0 where the denominator is 0 (zero_division=0)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape), where=denominator != 0)


def _f1(true_positives, false_positives, false_negatives):
    return _divide(2 * true_positives, 2 * true_positives + false_positives + false_negatives)


def _ranked_counts(probabilities_k: np.ndarray, targets_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, thresholds) for each distinct probability, highest first, predicting p >= t."""
    order = np.argsort(probabilities_k, kind="mergesort")[::-1]
    scores, truth = probabilities_k[order], (targets_k[order] > 0)
    last_of_each_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(truth)[last_of_each_value]
    return true_positives, last_of_each_value + 1 - true_positives, scores[last_of_each_value]


def pr_curve(probabilities_k: np.ndarray, targets_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) of one label, as ``sklearn.metrics.precision_recall_curve`` returns them.

    Thresholds increase; precision and recall have one more entry, the (1, 0) end point. As in scikit-learn,
    a label with no positive has recall 1 at every threshold.
    """
    probabilities_k, targets_k = np.asarray(probabilities_k), np.asarray(targets_k)
    true_positives, false_positives, thresholds = _ranked_counts(probabilities_k, targets_k)
    precision = _divide(true_positives, true_positives + false_positives)
    recall = _divide(true_positives, true_positives[-1]) if true_positives[-1] else np.ones(true_positives.size)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(probabilities_k: np.ndarray, targets_k: np.ndarray) -> float:
    """Σ_n (R_n − R_{n−1}) P_n over the label's precision-recall curve, as ``sklearn.metrics.average_precision_score``.

    A label with no positive scores 0.0 (scikit-learn's value too), not NaN, so that it stays a number in JSON.
    """
    precision, recall, _ = pr_curve(probabilities_k, targets_k)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def best_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the threshold among the distinct predicted probabilities that maximises F1 (on validation).

    Ties in F1 go to the threshold closest to 0.5, then to the higher one. A label with no positive keeps
    0.5 (every threshold gives F1 = 0). Returned in the probabilities' float dtype, so that ``p >= t`` on
    the same predictions reproduces the chosen F1 exactly.
    """
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    if not np.issubdtype(probabilities.dtype, np.floating):
        probabilities = probabilities.astype(np.float64)
    thresholds = np.full(probabilities.shape[1], 0.5, dtype=probabilities.dtype)
    for k in range(probabilities.shape[1]):
        positives = int((targets[:, k] > 0).sum())
        if positives == 0:
            continue
        true_positives, false_positives, candidates = _ranked_counts(probabilities[:, k], targets[:, k])
        f1 = _f1(true_positives, false_positives, positives - true_positives)
        best = np.flatnonzero(f1 == f1.max())
        # lexsort's last key is the primary one: distance to 0.5 first, then the higher threshold
        thresholds[k] = candidates[best[np.lexsort((-candidates[best], np.abs(candidates[best] - 0.5)))[0]]]
    return thresholds


def label_scores(probabilities: np.ndarray, targets: np.ndarray, thresholds: float | np.ndarray) -> tuple[dict, dict]:
    """(scalars, per_label) of predictions ``probabilities >= thresholds`` (one float, or one per label).

    scalars: ``acc`` (label-wise accuracy), ``macro_f1``, ``micro_f1`` (from the counts pooled over labels),
    ``macro_precision``, ``macro_recall``, ``subset_acc`` (every label of an image right), ``weighted_f1``
    (weighted by positives), ``balanced_acc`` (mean over labels of (TPR + TNR) / 2; a label with no positive,
    or no negative, in the targets counts the rate it has, as ``sklearn.metrics.balanced_accuracy_score``).
    per_label lists of K: ``precision``, ``recall``, ``f1``, ``support`` (positives), ``threshold``,
    ``average_precision``.
    """
    probabilities, truth = np.asarray(probabilities), np.asarray(targets) > 0
    num_labels = probabilities.shape[1]
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num_labels,))
    predicted = probabilities >= thresholds
    true_positives = (predicted & truth).sum(0)
    false_positives = (predicted & ~truth).sum(0)
    false_negatives = (~predicted & truth).sum(0)
    true_negatives = (~predicted & ~truth).sum(0)
    support = true_positives + false_negatives
    precision = _divide(true_positives, true_positives + false_positives)
    recall = _divide(true_positives, support)
    f1 = _f1(true_positives, false_positives, false_negatives)
    specificity = _divide(true_negatives, true_negatives + false_positives)
    rates_defined = (support > 0).astype(int) + ((true_negatives + false_positives) > 0)
    balanced = (recall + specificity) / np.maximum(rates_defined, 1)  # an undefined rate is 0 in the sum
    scalars = {
        "acc": float((predicted == truth).mean()),
        "macro_f1": float(f1.mean()),
        "micro_f1": float(_f1(true_positives.sum(), false_positives.sum(), false_negatives.sum())),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "subset_acc": float((predicted == truth).all(1).mean()),
        "weighted_f1": float(_divide((f1 * support).sum(), support.sum())),
        "balanced_acc": float(balanced.mean()),
    }
    per_label = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "threshold": thresholds.astype(float).tolist(),
        "average_precision": [average_precision(probabilities[:, k], truth[:, k]) for k in range(num_labels)],
    }
    return scalars, per_label
