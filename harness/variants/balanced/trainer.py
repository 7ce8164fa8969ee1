"""The balanced variant's trial hooks: which images an epoch visits, and the loss's class weights."""

from __future__ import annotations

import torch

from ferbench.harness.variants.balanced.sampling import balanced_epoch_indices, class_weights
from ferbench.harness.variants.trainer import VariantTrainer


class BalancedTrainer(VariantTrainer):
    def epoch_indices(self, indices: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.settings.oversample:
            return indices
        return balanced_epoch_indices(indices, targets, self.settings.fraction, generator)

    def loss_weights(self, train_targets: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        return class_weights(train_targets, num_classes) if self.settings.class_weighted_loss else None
