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
