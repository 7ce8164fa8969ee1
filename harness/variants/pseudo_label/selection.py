"""Teacher/student pseudo-labelling (Arsirii & Petrosiuk 2023): the rounds' logic as pure functions.

Round 0 is the teacher, trained on the labelled training part. At the end of round r the current
model predicts the unlabeled pool (``split.unlabeled_fraction`` of train with its labels hidden, or
an external pool); every image whose largest softmax probability exceeds ``threshold`` (strictly, as the paper's
``P(y|x) > t``; the paper rounds probabilities to 3 decimals first, we do not) joins the training
set with its predicted label, and round r+1 trains a student on the union. With ``repredict:
false`` (default; the paper's second round added 95 *new* images) an image keeps its first
pseudo-label and only the rest of the pool is predicted again; with ``repredict: true`` the whole
pool is re-predicted and the pseudo-labelled set replaced. ``per_class_cap`` bounds the
pseudo-labelled images of each class (the most confident are kept). Rounds stop early when a round
would add nothing.

The pool's true labels are read only to score the pseudo-labels (their precision); training
targets come from ``training_targets``, which reads labels at the labelled training indices only.
An external pool (``pseudo_label.unlabeled_path``) has no true labels: its precision is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ferbench.harness.data.unlabeled_pool import NOT_A_TARGET  # noqa: E402  (a pool image without a (pseudo-)label)


@dataclass
class Selection:
    """Pool images chosen as pseudo-labelled, with their predicted label and confidence."""

    indices: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)


def select_confident(candidates: torch.Tensor, probabilities: torch.Tensor, threshold: float) -> Selection:
    """The candidates whose largest probability is strictly above ``threshold``."""
    confidence, predicted = probabilities.max(dim=1)
    keep = confidence > threshold
    return Selection(candidates[keep], predicted[keep], confidence[keep])


def apply_cap(selection: Selection, cap: int | None, num_classes: int, already: torch.Tensor | None = None) -> Selection:
    """At most ``cap`` − ``already[c]`` images of each class c, the most confident first (ties:
    the earlier candidate); ``None`` keeps everything."""
    if cap is None:
        return selection
    already = torch.zeros(num_classes, dtype=torch.long) if already is None else already
    order = torch.sort(-selection.confidence, stable=True).indices
    keep = torch.zeros(len(selection), dtype=torch.bool)
    taken = already.clone()
    for position in order.tolist():
        cls = int(selection.labels[position])
        if taken[cls] < cap:
            taken[cls] += 1
            keep[position] = True
    return Selection(selection.indices[keep], selection.labels[keep], selection.confidence[keep])


def training_targets(
    labels: torch.Tensor, train_idx: torch.Tensor, pseudo_idx: torch.Tensor, pseudo_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, targets) of a round's training set: the labelled part with its labels, the
    pseudo-labelled pool images with their pseudo-labels. ``targets`` is indexed by dataset index;
    every other entry (val, test, the rest of the pool) is ``NOT_A_TARGET``."""
    targets = torch.full_like(labels, NOT_A_TARGET)
    targets[train_idx] = labels[train_idx]
    targets[pseudo_idx] = pseudo_labels.to(labels.dtype)
    return torch.cat([train_idx, pseudo_idx]), targets


def pseudo_precision(pseudo_labels: torch.Tensor, hidden: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Share of pseudo-labels equal to the hidden true label, overall and per pseudo-label class,
    over the images whose true label is known (an external pool has none: ``NOT_A_TARGET``); NaN
    where there are none."""
    known = hidden != NOT_A_TARGET
    pseudo_labels, correct = pseudo_labels[known], (pseudo_labels == hidden)[known]
    nan = float("nan")
    overall = float(correct.float().mean()) if len(correct) else nan
    per_class = [float(correct[pseudo_labels == c].float().mean()) if (pseudo_labels == c).any() else nan for c in range(num_classes)]
    return overall, per_class


@dataclass
class RoundPlan:
    """The next round's pseudo-labelled set and how it was chosen; ``stop_reason`` when no round follows."""

    pseudo_idx: torch.Tensor
    pseudo_labels: torch.Tensor
    added: torch.Tensor  # pool indices new in the set
    candidates: int
    confident: int
    stop_reason: str | None = None


def plan_next_round(
    pool: torch.Tensor, predict, pseudo_idx: torch.Tensor, pseudo_labels: torch.Tensor,
    *, threshold: float, repredict: bool, cap: int | None, num_classes: int,
) -> tuple[RoundPlan, torch.Tensor, torch.Tensor]:
    """Predict the candidates with ``predict(indices) -> probabilities`` and choose the next set.

    Returns (plan, candidates, probabilities) so the caller can store what the choice was based on.
    """
    candidates = pool if repredict else pool[~torch.isin(pool, pseudo_idx)]
    probabilities = predict(candidates) if len(candidates) else torch.empty(0, num_classes)
    confident = select_confident(candidates, probabilities, threshold)
    if repredict:
        chosen = apply_cap(confident, cap, num_classes)
        new_idx, new_labels = chosen.indices, chosen.labels
    else:
        kept = torch.bincount(pseudo_labels, minlength=num_classes)
        chosen = apply_cap(confident, cap, num_classes, already=kept)
        new_idx, new_labels = torch.cat([pseudo_idx, chosen.indices]), torch.cat([pseudo_labels, chosen.labels])
    order = torch.argsort(new_idx)
    new_idx, new_labels = new_idx[order], new_labels[order]
    added = new_idx[~torch.isin(new_idx, pseudo_idx)]
    plan = RoundPlan(new_idx, new_labels, added, len(candidates), len(confident))
    if not len(candidates):
        plan.stop_reason = "every pool image is pseudo-labelled already"
    elif not len(confident):
        plan.stop_reason = f"no prediction above the threshold {threshold} among the {len(candidates)} pool images predicted"
    elif repredict and torch.equal(new_idx, pseudo_idx) and torch.equal(new_labels, pseudo_labels):
        plan.stop_reason = "the re-predicted pseudo-labels are the same as the last round's"
    elif not len(added) and not repredict:
        plan.stop_reason = f"per_class_cap {cap} reached for every class with a confident prediction"
    return plan, candidates, probabilities


@dataclass
class PseudoLabelState:
    """The pseudo-labelled set, finished rounds' records and how the current round's set was chosen.
    Stored in every checkpoint so a retried trial continues in the same round with the same pseudo-labels."""

    pseudo_idx: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    pseudo_labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    records: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)  # how this round's pseudo-labelled set was chosen

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, stored: dict) -> "PseudoLabelState":
        return cls(**{name: stored[name] for name in cls.__dataclass_fields__ if name in stored})

    def adopt(self, plan: RoundPlan, selection: dict) -> None:
        self.pseudo_idx, self.pseudo_labels, self.selection = plan.pseudo_idx, plan.pseudo_labels, selection


def selection_summary(plan: RoundPlan, hidden_added: torch.Tensor, added_labels: torch.Tensor, num_classes: int) -> dict:
    """What a round's set-up added: counts per class and the added pseudo-labels' precision."""
    added_precision, _ = pseudo_precision(added_labels, hidden_added, num_classes)
    return {
        "candidates": plan.candidates, "confident": plan.confident, "images_added": len(plan.added),
        "added_per_class": torch.bincount(added_labels, minlength=num_classes).tolist(),
        "added_precision": added_precision,
    }


def round_record(round_no: int, state: PseudoLabelState, hidden: torch.Tensor, num_classes: int, evaluation: dict) -> dict:
    """One row of the round-by-round table: the set the round trained on and how it scored.
    ``hidden`` are the true labels of ``state.pseudo_idx`` (for the precision only)."""
    precision, precision_per_class = pseudo_precision(state.pseudo_labels, hidden, num_classes)
    base = {"candidates": 0, "confident": 0, "images_added": 0, "added_per_class": [0] * num_classes,
            "added_precision": float("nan")}
    return {
        "round": round_no, **base, **state.selection,
        "pseudo_labelled": len(state.pseudo_idx),
        "pseudo_per_class": torch.bincount(state.pseudo_labels, minlength=num_classes).tolist(),
        "pseudo_precision": precision, "pseudo_precision_per_class": precision_per_class,
        **evaluation,
    }
