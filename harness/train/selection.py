"""Which weights a round's test evaluation uses, and which round is a pseudo-labelling arm's result.

``train.select: best_val`` tests the round's epoch with the best validation metric, as Keras's
``ModelCheckpoint(save_best_only=True)`` keeps it in Arsirii & Petrosiuk 2023 ("saves the model only
if the accuracy of the model increases"): ``val_acc`` by default, ``val_loss`` (Keras's own default
monitor) as an option. The best weights so far ride in every checkpoint, so neither checkpoint
rotation (``run.keep_checkpoints``) nor a retry can lose them.

A pseudo-labelling arm's result is the round with the best validation macro F1: test scores never
choose. Ties go to the earlier epoch, and to the earlier round, in both rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

HIGHER_IS_BETTER = {"val_acc": True, "val_loss": False}
ROUND_METRIC = "val_macro_f1"  # what chooses a pseudo-labelling arm's round
ROUND_RULE = "the round with the best validation macro F1 (ties: the earlier round)"


def best_index(values: Sequence[float], higher_is_better: bool = True) -> int | None:
    """Position of the best finite value, the first among equals; None when none is finite."""
    best = None
    for position, value in enumerate(values):
        if value is None or not math.isfinite(value):
            continue
        if best is None or (value > values[best] if higher_is_better else value < values[best]):
            best = position
    return best


def select_round(records: Sequence[dict]) -> int:
    """The ``round`` of the record with the highest ``val_macro_f1`` (ties: the earlier round; no
    finite value at all: the first round). Reads nothing but that key, so test scores cannot leak in."""
    if not records:
        raise ValueError("select_round: no finished round to choose from")
    position = best_index([record.get(ROUND_METRIC) for record in records], higher_is_better=True)
    return int(records[position or 0]["round"])


@dataclass
class BestEpoch:
    """The best trained epoch of the current round so far (``round_epoch`` ≥ 1) and its weights."""

    metric: str  # val_acc or val_loss
    round_epoch: int = 0  # 0: no trained epoch offered yet
    epoch: int = -1
    value: float = math.nan
    weights: dict | None = None

    def offer(self, row: dict, model: torch.nn.Module) -> None:
        """Keep ``model``'s weights (on the CPU) when the row's epoch beats the best so far; the
        untrained evaluation (``round_epoch`` 0) never counts."""
        if row["round_epoch"] < 1:
            return
        candidates = [self.value, row[self.metric]] if self.weights is not None else [row[self.metric]]
        if self.weights is not None and best_index(candidates, HIGHER_IS_BETTER[self.metric]) != 1:
            return
        self.round_epoch, self.epoch, self.value = int(row["round_epoch"]), int(row["epoch"]), float(row[self.metric])
        self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> int:
        """Load the best weights into ``model``; returns their ``round_epoch``."""
        if self.weights is None:
            raise RuntimeError("train.select best_val: the round ended before any trained epoch was offered")
        model.load_state_dict(self.weights)
        return self.round_epoch

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, stored: dict) -> "BestEpoch":
        return cls(**stored)
