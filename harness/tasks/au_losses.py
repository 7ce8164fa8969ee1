"""Multi-label (action-unit) losses on logits (N, K) and 0/1 targets (N, K).

The four ``train.loss`` choices of the multilabel task: binary cross-entropy, plain and class-weighted
(Arsirii & Petrosiuk 2023, eq. 5), LSEP (eq. 1) and the precision-recall loss L_pr (eq. 6). Each is
computed in fp32 whatever the autocast dtype of the logits, and returns a scalar: the mean over the
batch (L_pr is defined on the batch as a whole).
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

MultiLabelLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

# Stands in for log(0) in the masked log-sum-exps of LSEP: finite, so that a row with an empty sum has no
# inf - inf in its backward pass, and small enough that exp(it - anything real) is exactly 0 in fp32.
_LOG_ZERO = torch.finfo(torch.float32).min / 4


def _fp32(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.float(), targets.to(device=logits.device, dtype=torch.float32)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits (eq. 5), mean over images and labels.

    ``pos_weight`` (K,) multiplies each label's positive term (``positive_weights`` gives neg/pos), the
    class-weighted BCE the paper compares LSEP with.
    """
    logits, targets = _fp32(logits, targets)
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def positive_weights(targets: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per label, (number of negatives) / (number of positives) in the training targets (N, K): float32 (K,).

    A label with no positive, or no negative, gets 1.0 (its BCE left unweighted): with no positive there is
    no positive term to weigh (and n/0 would not be finite), and a ratio of 0 for a label that is always
    positive would drop that label from the loss altogether.
    """
    targets = torch.as_tensor(targets)
    positives = (targets > 0).sum(0).double()
    negatives = targets.shape[0] - positives
    weights = torch.where((positives > 0) & (negatives > 0), negatives / positives.clamp(min=1), torch.ones_like(positives))
    return weights.float()


def lsep_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp pairwise loss (eq. 1): per image, log(1 + Σ_{v∉Y} Σ_{u∈Y} exp(f_v − f_u)); mean over images.

    The paper's print of eq. 1 drops the exp; this is the LSEP of its reference [27] (Li et al. 2017),
    which it names. The double sum factorises, Σ_v exp(f_v) · Σ_u exp(−f_u), so the loss is
    softplus(logsumexp_{v∉Y} f_v + logsumexp_{u∈Y} −f_u): stable for any logits and O(K) per image.
    An image with no positive label or with every label positive has no pair: one log-sum-exp is then the
    finite stand-in for log 0 (never −inf, so no inf − inf in the backward pass), and softplus of it is
    exactly 0 in fp32, as is its gradient.
    """
    logits, targets = _fp32(logits, targets)
    positive = targets > 0
    log_negatives = torch.logsumexp(logits.masked_fill(positive, _LOG_ZERO), dim=1)
    log_positives = torch.logsumexp((-logits).masked_fill(~positive, _LOG_ZERO), dim=1)
    return F.softplus(log_negatives + log_positives).mean()


def lpr_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7,
             average: Literal["micro", "macro"] = "micro") -> torch.Tensor:
    """Precision-recall loss (eq. 6): L_pr = 1 − P·R, with P and R made soft by sigmoid probabilities p.

    The paper defines TP = Σ y·p, FP = Σ (1−y)·p, FN = Σ y·(1−p) with no index on the sums and one
    Precision and one Recall (eqs. 3, 4) per loss, averaged "over the entire batch": the literal reading,
    the default ``average="micro"``, sums over every image and every label of the batch at once,
    P = TP / (TP + FP + eps), R = TP / (TP + FN + eps). ``average="macro"`` is the other reading, in line
    with the paper's per-AU F1: P_k and R_k per label over the batch, loss = mean_k (1 − P_k·R_k).

    ``eps`` keeps the quotients finite: a batch (or, for macro, a label) with no positive has TP = FN = 0,
    so P = R = 0, the loss is 1 and its gradient is 0 (finite, no signal).
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"lpr_loss: average must be 'micro' or 'macro', not {average!r}")
    logits, targets = _fp32(logits, targets)
    probabilities = torch.sigmoid(logits)
    dims = None if average == "micro" else 0
    true_positives = torch.sum(targets * probabilities, dim=dims)
    false_positives = torch.sum((1 - targets) * probabilities, dim=dims)
    false_negatives = torch.sum(targets * (1 - probabilities), dim=dims)
    precision = true_positives / (true_positives + false_positives + eps)
    recall = true_positives / (true_positives + false_negatives + eps)
    return (1 - precision * recall).mean()


def lpr_macro_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_pr read per label (``train.loss: lpr_macro``): mean over labels of 1 − P_k·R_k (see ``lpr_loss``)."""
    return lpr_loss(logits, targets, average="macro")


def _weighted_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    if pos_weight is None:
        raise ValueError("the bce_weighted loss needs pos_weight (positive_weights of the training targets)")
    return bce_loss(logits, targets, pos_weight)


def _unweighted(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> MultiLabelLoss:
    def uniform(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
        return loss(logits, targets)

    uniform.__name__ = uniform.__qualname__ = loss.__name__
    uniform.__doc__ = loss.__doc__
    return uniform


# ``train.loss`` name -> loss with the uniform signature (logits, targets, pos_weight); only bce_weighted uses pos_weight.
LOSSES: dict[str, MultiLabelLoss] = {
    "bce": _unweighted(bce_loss),
    "bce_weighted": _weighted_bce,
    "lsep": _unweighted(lsep_loss),
    "lpr": _unweighted(lpr_loss),
    "lpr_macro": _unweighted(lpr_macro_loss),
}
