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
    monkeypatch.setitem(registry.VARIANTS.entries, "first_half",
                        registry.VariantInfo(name="first_half", description="test", trainer=f"{__name__}:FirstHalf"))
    monkeypatch.setitem(tasks.registry.TASKS.entries, "top_two",
                        tasks.TaskInfo(name="top_two", description="test", implementation=f"{__name__}:TopTwo",
                                       report=tasks.CLASSIFICATION.report))


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


def first_half_report(context) -> str:
    """An outside variant's report section: it sees the skeleton's tables of its own arms."""
    arms = context.trials[context.trials["variant"] == "first_half"]["arm_id"].tolist()
    return f"## First half\n\nArms: {', '.join(arms)}; epochs per arm: {context.spec.train.epochs}\n"


def top_two_report(context) -> str:
    """An outside task's report part, in place of classification's per-class tables."""
    (context.report_dir / "tables" / "top_two.csv").write_text("arm_id\n" + "\n".join(context.trials["arm_id"]) + "\n")
    return "## Top-two accuracy\n"


def _finished_experiment(folder, spec: StudySpec):
    """An experiment folder as a finished study leaves it (one row per epoch, no checkpoints)."""
    import json

    from ferbench.harness.study.atomic import atomic_write_json
    from ferbench.harness.study.layout import experiment_paths

    arms = [{**arm, "status": "scheduled"} for arm in spec.arms()]
    for number, arm in enumerate(arms):
        trial = folder / f"{arm['arm_id']}_00000_{number:05d}"
        atomic_write_json(trial / "params.json", {})
        rows = [{"epoch": e, "train_acc": 0.3 + 0.1 * e, "val_acc": 0.3 + 0.05 * e, "train_loss": 1.5 - 0.1 * e,
                 "val_loss": 1.6 - 0.05 * e, "lr": 1e-3, "epoch_time_s": 2.0 * (e > 0), "input_size": 24,
                 "train_images_per_s": 100.0 if e else float("nan"), "params_total": 1000, "params_trainable": 1000,
                 **({"trial_finished": True, "test_acc": 0.4, "test_macro_f1": 0.3, "test_loss": 1.0} if e == 2 else {})}
                for e in range(3)]
        (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_json(experiment_paths(folder)["manifest"], {
        "study": "quick", "experiment": folder.name, "created": "2026-01-01T00:00:00+00:00", "spec": spec.model_dump(mode="json"),
        "versions": {"ferbench": "0.0"}, "git_commit": None, "hardware": {"processor": "x86_64", "cpu_count": 2},
        "dataset": {"name": "SynthFER", "images": 90, "image_size": [24, 24], "channels": 1, "class_names": list("abc"),
                    "fingerprint_sha256": "0" * 64},
        "split_class_counts": {part: dict.fromkeys("abc", n) for part, n in (("train", 20), ("val", 5), ("test", 5))},
    })
    atomic_write_json(experiment_paths(folder)["grid"], arms)
    return folder


def test_the_report_skeleton_takes_a_task_and_a_variant_part_through_their_registry_entries(outside_units, monkeypatch, tmp_path):
    from ferbench.reports import build_report

    monkeypatch.setitem(registry.VARIANTS.entries, "first_half", registry.VariantInfo(
        name="first_half", description="test", trainer=f"{__name__}:FirstHalf", report_section=f"{__name__}:first_half_report"))
    monkeypatch.setitem(tasks.registry.TASKS.entries, "top_two", tasks.TaskInfo(
        name="top_two", description="test", implementation=f"{__name__}:TopTwo", report=f"{__name__}:top_two_report"))
    spec = load_spec("quick", ["grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline,first_half]",
                               "train.epochs=2", "task=top_two"])
    report = (build_report(_finished_experiment(tmp_path / "exp", spec)) / "report.md").read_text()
    assert "## First half\n\nArms: small_cnn_random_first_half_s0; epochs per arm: 2" in report
    assert "## Top-two accuracy" in report and "Per-class F1" not in report
    tables = tmp_path / "exp" / "report" / "tables"
    assert (tables / "top_two.csv").read_text().count("small_cnn") == 2
    assert not (tables / "per_class.csv").exists()  # classification's part was not called
