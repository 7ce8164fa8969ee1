"""What a variant can change in a trial: the hooks the trial loop calls, with the baseline's defaults.

The trial loop (``ferbench.harness.train.trial``) trains in *rounds*: round 0 is ``train.epochs``
epochs on the labelled training part; a variant with rounds (pseudo-labelling) decides at each
round's end whether another round follows and on what. Every hook has the baseline's behaviour
here, so a variant overrides only what it changes. ``CombinedTrainer`` joins the trainers of a
``grid.variant`` combination (``pseudo_label+balanced``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferbench.harness.units import load_object
from ferbench.harness.variants.registry import parse_combination


@dataclass
class RoundState:
    """Where a trial stands: the next row's round and epoch within it (0 = the round's evaluation
    before training), and whether the trial is finished. Stored in every checkpoint, with the
    variant's own state beside it (``VariantTrainer.state_dict``)."""

    round: int = 0
    round_epoch: int = 0
    finished: bool = False
    stop_reason: str = ""

    def advance(self) -> None:
        self.round, self.round_epoch = self.round + 1, 0

    def finish(self, reason: str) -> None:
        self.finished, self.stop_reason = True, reason


class VariantTrainer:
    """The baseline's hooks. ``trial`` is the trial's ``_Trial`` (model, data, split, spec)."""

    has_rounds = False  # trains more than one round (at most one trainer of a combination)

    def __init__(self, spec, settings=None):
        self.spec, self.settings = spec, settings

    # -- the data of each epoch --
    def epoch_indices(self, indices: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The images one training epoch visits (the loop shuffles them)."""
        return indices

    def loss_weights(self, train_targets: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """Per-class loss weights, or None for an unweighted loss."""
        return None

    # -- rounds --
    def training_set(self, labels: torch.Tensor, train_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, targets indexed by dataset index) the current round trains on."""
        return train_idx, labels

    def round_epochs(self, round_no: int) -> int:
        return self.spec.train.epochs

    def start_round(self, trial, round_no: int) -> None:
        """Called before round ``round_no`` > 0 trains its first epoch."""

    def test_round(self, rounds: RoundState) -> int | None:
        """The round number a round's test artifacts are kept under, or None for the headline names."""
        return None

    def end_round(self, trial, rounds: RoundState, metrics: dict, per_class: dict) -> None:
        """After a round's test evaluation: finish the trial or set up the next round. ``metrics`` is
        the round's last row and may gain the variant's columns."""
        if trial.spec.train.select == "best_val":  # the tested epoch may be in no checkpoint
            from ferbench.harness.train.test_artifacts import save_selected_weights

            save_selected_weights(trial.model)
        rounds.finish("")

    # -- checkpoints --
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """``state`` is what ``state_dict`` returned (absent keys: a checkpoint from before this variant had them)."""


class CombinedTrainer(VariantTrainer):
    """The trainers of a combination: data hooks chain, the rounds come from the one with rounds."""

    def __init__(self, trainers: list[VariantTrainer], spec):
        super().__init__(spec)
        self.trainers = trainers
        self.rounds = next((t for t in trainers if t.has_rounds), trainers[0])
        self.has_rounds = self.rounds.has_rounds

    def epoch_indices(self, indices, targets, generator):
        for trainer in self.trainers:
            indices = trainer.epoch_indices(indices, targets, generator)
        return indices

    def loss_weights(self, train_targets, num_classes):
        return next((w for t in self.trainers if (w := t.loss_weights(train_targets, num_classes)) is not None), None)

    def training_set(self, labels, train_idx):
        return self.rounds.training_set(labels, train_idx)

    def round_epochs(self, round_no):
        return self.rounds.round_epochs(round_no)

    def start_round(self, trial, round_no):
        self.rounds.start_round(trial, round_no)

    def test_round(self, rounds):
        return self.rounds.test_round(rounds)

    def end_round(self, trial, rounds, metrics, per_class):
        self.rounds.end_round(trial, rounds, metrics, per_class)

    def state_dict(self):
        return {k: v for trainer in self.trainers for k, v in trainer.state_dict().items()}

    def load_state_dict(self, state):
        for trainer in self.trainers:
            trainer.load_state_dict(state)


def trainer_for(variant: str, spec) -> VariantTrainer:
    """The hooks of a ``grid.variant`` entry for one trial."""
    trainers = []
    for info in parse_combination(variant):
        trainer_class = load_object(info.trainer) if info.trainer else VariantTrainer
        trainers.append(trainer_class(spec, getattr(spec, info.settings_key) if info.settings_key else None))
    return trainers[0] if len(trainers) == 1 else CombinedTrainer(trainers, spec)
