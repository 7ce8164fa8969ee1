"""The pseudo_label variant's trial hooks: rounds of teacher and students.

Round 0 is the teacher on the labelled training part; each later round trains a student on it plus
the pseudo-labelled pool images (``selection.training_targets``), starting from the previous model's
or the arm's initial weights, with a fresh optimizer. Every round is tested and its files kept; the
trial's result is the round chosen on validation (``rounds.headline_metrics``).
"""

from __future__ import annotations

import torch

from ferbench.harness.variants.pseudo_label import selection as pl
from ferbench.harness.variants.pseudo_label.rounds import end_round, headline_metrics
from ferbench.harness.variants.trainer import RoundState, VariantTrainer


class PseudoLabelTrainer(VariantTrainer):
    has_rounds = True

    def __init__(self, spec, settings):
        super().__init__(spec, settings)
        self.state = pl.PseudoLabelState()

    def training_set(self, labels: torch.Tensor, train_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pl.training_targets(labels, train_idx, self.state.pseudo_idx, self.state.pseudo_labels)

    def round_epochs(self, round_no: int) -> int:
        return self.spec.train.epochs if round_no == 0 else self.settings.epochs_per_round or self.spec.train.epochs

    def start_round(self, trial, round_no: int) -> None:
        trial.restart_training(from_initial=self.settings.student_init == "initial")

    def test_round(self, rounds: RoundState) -> int | None:
        return rounds.round

    def end_round(self, trial, rounds: RoundState, metrics: dict, per_class: dict) -> None:
        end_round(trial, self.settings, rounds, self.state, metrics, per_class)
        metrics.update({"pl_rounds": rounds.round if rounds.finished else rounds.round - 1, "pl_stop_reason": rounds.stop_reason})
        if rounds.finished:
            metrics.update(headline_metrics(self.state.records, metrics))

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state = pl.PseudoLabelState.from_dict(state)
