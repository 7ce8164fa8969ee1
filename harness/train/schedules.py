"""Learning-rate schedules: the learning rate of each training epoch.

A schedule belongs to training, not to the backbone: the only one today is the ``two_stage``
transfer schedule (Arsirii et al.), whose learning rate drops by ``unfreeze_lr_factor`` when the
trunk is unfrozen (``ferbench.backbones.freezing`` decides which layers train in that epoch).
"""

from __future__ import annotations

from ferbench.backbones.freezing import FreezePlan


def learning_rate_for_epoch(plan: FreezePlan, base_lr: float, epoch: int) -> float:
    """The learning rate of training ``epoch`` (1-based) under ``plan``."""
    if plan.policy == "two_stage" and epoch >= plan.unfreeze_epoch:
        return base_lr * plan.unfreeze_lr_factor
    return base_lr


def plateau_unfreeze_epoch(patience: int, latest: int, round_rows: list[dict]) -> int:
    """two_stage with ``unfreeze_on=val_plateau``: the first fine-tuning epoch, the one after ``patience``
    head-training epochs without a lower ``val_loss`` (Keras EarlyStopping's rule), at the latest ``latest``.
    Computed from the round's rows so far, which every checkpoint carries: a resumed trial decides the same."""
    best, waited = float("inf"), 0
    for row in sorted(round_rows, key=lambda r: r["round_epoch"]):
        if not 1 <= row["round_epoch"] < latest:
            continue
        if row["val_loss"] < best:
            best, waited = row["val_loss"], 0
        else:
            waited += 1
        if waited >= patience:
            return row["round_epoch"] + 1
    return latest
