"""Variants and tasks are units registered by name: the trial loop calls their hooks and knows
neither by name, so a variant or task registered outside the built-ins trains like a built-in one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferbench.harness import tasks, variants
from ferbench.harness.spec import SpecError, StudySpec, load_spec
from ferbench.harness.tasks.classification import SingleLabelClassification
from ferbench.harness.train.loop import predict
from ferbench.harness.train.trial import StudyPayload, _build_trial
from ferbench.harness.variants import registry
from ferbench.harness.variants.trainer import VariantTrainer


def test_the_builtin_variants_declare_their_spec_sections():
    assert variants.list_variants() == ["baseline", "pseudo_label", "balanced"]
    assert {"pseudo_label", "balanced"} <= set(StudySpec.model_fields)
    assert variants.get_variant("pseudo_label").has_rounds and not variants.get_variant("balanced").has_rounds
    spec = load_spec("quick", ["grid.variant=[balanced]", "balanced.fraction=0.5"])
    assert spec.balanced.fraction == 0.5


@pytest.mark.parametrize("variant, message", [
    ("mixup", "unknown variant 'mixup'; registered: baseline, pseudo_label, balanced"),
    ("baseline+balanced", "baseline is training without a variant and combines with nothing"),
    ("balanced+balanced", "names a variant twice"),
])
def test_a_variant_that_is_not_registered_or_combines_badly_is_refused(variant, message):
    with pytest.raises(SpecError, match="grid.variant") as err:
        load_spec("quick", [f"grid.variant=[{variant}]"])
    assert message in str(err.value)


def test_combinations_take_the_rounds_from_the_variant_that_has_them():
    spec = load_spec("quick", ["grid.variant=[balanced+pseudo_label]", "grid.backbone=[small_cnn]"])
    assert spec.split.unlabeled_fraction == 0.1  # pseudo_label's own check of the spec ran for the combination


class FirstHalf(VariantTrainer):
    """A variant from outside the built-ins: each epoch trains on the first half of the training part."""

    def epoch_indices(self, indices, targets, generator):
        return indices[: len(indices) // 2]


class TopTwo(SingleLabelClassification):
    """A task from outside the built-ins: a prediction counts as right when the class is among the top two."""

    def correct(self, logits, targets):
        return (logits.topk(2, dim=1).indices == targets[:, None]).any(1).sum()

    def accuracy_and_loss(self, logits, targets, weight=None):
        return float(self.correct(logits, targets)) / len(targets), super().accuracy_and_loss(logits, targets, weight)[1]


@pytest.fixture
def outside_units(monkeypatch):
    monkeypatch.setitem(registry._VARIANTS, "first_half",
                        registry.VariantInfo(name="first_half", description="test", trainer=f"{__name__}:FirstHalf"))
    monkeypatch.setitem(tasks.registry._TASKS, "top_two",
                        tasks.TaskInfo(name="top_two", description="test", implementation=f"{__name__}:TopTwo"))


def _trial(variant: str, *overrides: str):
    spec = load_spec("quick", ["grid.backbone=[small_cnn]", "resources.cpu=1", f"grid.variant=[{variant}]", *overrides])
    generator = torch.Generator().manual_seed(0)
    payload = StudyPayload(spec=spec.model_dump(mode="json"),
                           images=torch.randint(0, 256, (40, 24, 24), dtype=torch.uint8, generator=generator).numpy(),
                           labels=np.arange(40) % 4, class_names=tuple("abcd"),
                           splits={0: {"train": np.arange(24), "val": np.arange(24, 32), "test": np.arange(32, 40)}},
                           weight_files={})
    arm = {"arm_id": "a", "backbone": "small_cnn", "init": "random", "variant": variant, "seed": 0}
    return _build_trial({"arm": arm}, payload)


def test_a_variant_registered_outside_the_builtins_changes_what_the_trial_trains_on(outside_units):
    trial = _trial("first_half")
    row = trial.run_epoch(1, 0, 1, trial.split["train"], trial.labels)
    assert row["epoch_images"] == 12 and row["train_size"] == 24
    assert _trial("baseline").run_epoch(1, 0, 1, trial.split["train"], trial.labels)["epoch_images"] == 24


def test_the_trial_scores_with_the_task_the_spec_names(outside_units):
    trial = _trial("baseline", "task=top_two")
    assert isinstance(trial.task, TopTwo)
    row = trial.run_epoch(0, 0, 0, trial.split["train"], trial.labels)  # evaluation only: the untrained model
    logits = predict(trial.model, trial.images, trial.split["train"], **trial.eval_kwargs)
    top_two = (logits.topk(2, dim=1).indices == trial.labels[trial.split["train"]][:, None]).any(1).float().mean()
    assert row["train_acc"] == pytest.approx(float(top_two))
    with pytest.raises(SpecError, match="unknown task 'nope'; registered: classification"):
        load_spec("quick", ["task=nope"])
