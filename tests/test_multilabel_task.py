"""The multilabel task (action units): its spec rules, its pieces, and one small SynthFER AU study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.tasks import get_task
from ferbench.harness.tasks.au_metrics import best_thresholds, label_scores
from ferbench.harness.train.schedules import plateau_unfreeze_epoch

AU_STUDY = ["task=multilabel", "data.num_images=300", "grid.backbone=[small_cnn]", "grid.init=[random]",
            "grid.variant=[baseline]", "grid.seed=[0]", "grid.exclude=[]", "train.epochs=2"]


def _error(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec("quick", overrides)
    return str(caught.value)


# --- the spec ----------------------------------------------------------------------------------


def test_losses_select_metrics_and_variants_belong_to_the_task():
    assert "train.loss: lsep is not a loss of task classification" in _error(["train.loss=lsep"])
    assert "train.loss: cross_entropy is not a loss of task multilabel" in _error([*AU_STUDY, "train.loss=cross_entropy"])
    assert "train.select_metric: val_f1_macro is not measured by task classification" in _error(
        ["train.select=best_val", "train.select_metric=val_f1_macro"])
    message = _error([*AU_STUDY, "grid.variant=[baseline,pseudo_label]"])
    assert "grid.variant: task multilabel trains baseline only, not pseudo_label" in message
    assert "0 and 1" in _error([*AU_STUDY, "multilabel.threshold=1.5"])
    spec = load_spec("quick", [*AU_STUDY, "grid.train.loss=[bce,bce_weighted,lsep,lpr]", "multilabel.threshold=val_f1",
                               "train.select=best_val", "train.select_metric=val_f1_macro"])
    assert [arm["settings"]["train.loss"] for arm in spec.arms()] == ["bce", "bce_weighted", "lsep", "lpr"]
    assert "train.loss: cross_entropy is not a loss" in _error([*AU_STUDY, "grid.train.loss=[bce,cross_entropy]"])


def test_the_built_in_au_studies_hold_the_papers_settings():
    paper = load_spec("arsirii2023_au")
    assert paper.task == "multilabel" and paper.train.head == "arsirii_au" and paper.train.lr == 1e-5
    assert paper.train.batch_size == 64 and paper.train.input_size == 224 and paper.multilabel.threshold == 0.5
    assert paper.train.freeze.policy == "two_stage" and paper.train.freeze.unfreeze_on == "val_plateau"
    assert paper.data.format == "disfa" and paper.split.kind == "subject_kfold" and paper.split.k == 3
    assert {arm["settings"]["train.loss"] for arm in paper.arms()} == {"bce", "lsep", "lpr"}
    assert {arm["backbone"] for arm in paper.arms()} == {"timm:densenet121", "timm:densenet201", "mobilenet_v1",
                                                         "timm:mobilenetv2_100"}
    from ferbench.backbones import backbone_parameter_counts, meta_backbone

    millions = {name: backbone_parameter_counts(name, meta_backbone(name, 8))["params"] / 1e6 for name in paper.grid.backbone}
    assert {name: round(value) for name, value in millions.items()} == {  # the paper's 7 M, 18 M, 3 M, 2 M
        "timm:densenet121": 7, "timm:densenet201": 18, "mobilenet_v1": 3, "timm:mobilenetv2_100": 2}
    quick = load_spec("arsirii2023_au_quick")
    assert quick.data.format == "synthfer" and len(quick.arms()) == 9


# --- the task's pieces -------------------------------------------------------------------------


def test_the_plateau_rule_unfreezes_after_patience_epochs_without_a_lower_val_loss():
    rows = [{"round_epoch": e, "val_loss": v} for e, v in enumerate([9.0, 1.0, 0.8, 0.9, 0.85, 0.7])]
    assert plateau_unfreeze_epoch(2, 10, rows) == 5  # epochs 3 and 4 did not beat 0.8: fine-tuning from 5
    assert plateau_unfreeze_epoch(1, 10, rows) == 4
    assert plateau_unfreeze_epoch(3, 10, rows) == 10  # no plateau yet: the latest epoch
    assert plateau_unfreeze_epoch(2, 4, rows) == 4  # rows at or after the latest epoch do not count
    assert plateau_unfreeze_epoch(1, 10, rows[:1]) == 10  # epoch 0 (before training) is no head epoch


def test_two_stage_fine_tunes_the_last_k_trunk_layers_when_asked():
    from ferbench.backbones import create_backbone
    from ferbench.backbones.freezing import FreezePlan, apply_freeze, trunk_layers

    model = create_backbone("small_cnn", 8)
    trunk = trunk_layers(model)
    trains = lambda: [any(p.requires_grad for p in layer.parameters()) for layer in trunk]  # noqa: E731
    apply_freeze(model, FreezePlan("two_stage", unfreeze_epoch=3, unfreeze_k=2), 2)
    assert not any(trains())
    apply_freeze(model, FreezePlan("two_stage", unfreeze_epoch=3, unfreeze_k=2), 3)
    assert trains() == [False] * (len(trunk) - 2) + [True, True]
    assert all(p.requires_grad for p in model.get_classifier().parameters())
    apply_freeze(model, FreezePlan("two_stage", unfreeze_epoch=3), 3)
    assert all(trains())


def test_a_dataset_without_action_units_is_refused_in_one_line():
    from ferbench.harness.data.synthfer import generate_synthfer

    dataset = generate_synthfer(num_images=20, image_size=16, seed=0)
    task = get_task("multilabel", load_spec("quick", AU_STUDY))
    targets, names = task.targets(dataset)
    assert targets.shape == (20, 8) and names[0] == "AU1"
    dataset.action_units = None
    with pytest.raises(ValueError, match="has no multi-label annotations.*use data.format=disfa"):
        task.targets(dataset)


def test_bce_weighted_weights_positives_by_the_training_parts_imbalance():
    task = get_task("multilabel", load_spec("quick", [*AU_STUDY, "train.loss=bce_weighted"]))
    targets = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.uint8)
    assert torch.allclose(task.loss_weights(targets), torch.tensor([3.0, 3.0]))
    logits = torch.tensor([[0.5, -1.0], [0.0, 2.0], [-2.0, 1.0], [1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=torch.tensor([3.0, 3.0]))
    assert torch.isclose(task.loss(logits, targets, task.loss_weights(targets)), expected)
    assert get_task("multilabel", load_spec("quick", AU_STUDY)).loss_weights(targets) is None


def test_val_f1_thresholds_come_from_validation_and_apply_unchanged_to_test():
    generator = np.random.default_rng(0)
    val_targets = generator.integers(0, 2, (40, 3)).astype(np.uint8)
    val_logits = torch.from_numpy(generator.normal(size=(40, 3)) + val_targets * 0.8).float()
    test_targets = generator.integers(0, 2, (30, 3)).astype(np.uint8)
    test_logits = torch.from_numpy(generator.normal(size=(30, 3)) + test_targets * 0.8).float()
    task = get_task("multilabel", load_spec("quick", [*AU_STUDY, "multilabel.threshold=val_f1"]))
    asked = []

    def validation():
        asked.append(1)
        return val_logits, torch.from_numpy(val_targets)

    scalars, per_label = task.scores(test_logits, torch.from_numpy(test_targets), 3, validation=validation)
    chosen = best_thresholds(torch.sigmoid(val_logits).numpy(), val_targets)
    assert asked == [1] and np.allclose(per_label["threshold"], chosen) and per_label["threshold_rule"] == "val_f1"
    expected, _ = label_scores(torch.sigmoid(test_logits).numpy(), test_targets, chosen)
    assert scalars["macro_f1"] == pytest.approx(expected["macro_f1"])
    fixed = get_task("multilabel", load_spec("quick", [*AU_STUDY, "multilabel.threshold=0.3"]))
    _, per_label = fixed.scores(test_logits, torch.from_numpy(test_targets), 3)
    assert per_label["threshold"] == [0.3] * 3 and per_label["threshold_rule"] == "fixed"


# --- one small study ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def au_study(tmp_path_factory):
    """small_cnn from random init, BCE and L_pr, thresholds chosen on validation, 4 epochs on 300 SynthFER faces:
    the head alone until val_loss stops falling for one epoch (at the latest from epoch 4), then everything."""
    from ferbench.harness.study.engine import run_study

    storage = tmp_path_factory.mktemp("au")
    spec = load_spec("quick", [*AU_STUDY, "grid.train.loss=[bce,lpr]", "multilabel.threshold=val_f1", "train.epochs=4",
                               "train.freeze.policy=two_stage", "train.freeze.unfreeze_on=val_plateau",
                               "train.freeze.patience=1", "train.freeze.unfreeze_epoch=4",
                               "run.max_concurrent=1", f"run.storage={storage}", "run.name=au"])
    outcome = run_study(spec)
    assert set(outcome.statuses.values()) == {"completed"}, outcome.statuses
    return outcome


def test_an_au_trial_reports_its_metrics_and_tests_at_the_thresholds_it_chose(au_study):
    import pandas as pd

    from ferbench.harness.study.checkpoints import checkpoint_dirs, read_checkpoint

    experiment = au_study.experiment_dir
    epochs = pd.read_csv(experiment / "report" / "tables" / "epochs.csv")
    assert {"train_acc", "val_acc", "val_loss", "val_f1_macro"} <= set(epochs.columns)
    assert epochs["val_acc"].between(0, 1).all() and epochs["val_f1_macro"].between(0, 1).all()
    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv")
    assert set(trials["arm_id"]) == {"small_cnn_random_baseline_loss-bce_s0", "small_cnn_random_baseline_loss-lpr_s0"}
    for arm in trials.itertuples():
        (folder,) = experiment.glob(f"{arm.arm_id}_*")
        saved = np.load(folder / "test_predictions.npz")
        per_label = json.loads((folder / "test_per_class.json").read_text())
        assert saved["targets"].shape == saved["probabilities"].shape == (len(saved["indices"]), 8)
        assert per_label["class_names"][:2] == ["AU1", "AU2"] and per_label["threshold_rule"] == "val_f1"
        assert np.allclose(saved["thresholds"], per_label["threshold"])
        scalars, recomputed = label_scores(saved["probabilities"], saved["targets"], saved["thresholds"])
        assert arm.test_macro_f1 == pytest.approx(scalars["macro_f1"]) and arm.test_acc == pytest.approx(scalars["acc"])
        assert per_label["f1"] == pytest.approx(recomputed["f1"])
        # The thresholds are the F1-best ones on validation predictions of the tested (last) weights.
        state, _ = read_checkpoint(checkpoint_dirs(folder)[0])
        val_probabilities, val_targets = _validation_predictions(experiment, state["model"])
        assert np.allclose(saved["thresholds"], best_thresholds(val_probabilities, val_targets), atol=1e-6)


def _validation_predictions(experiment, weights: dict) -> tuple[np.ndarray, np.ndarray]:
    from ferbench.backbones import create_backbone, get_backbone_info
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.data.splits import load_splits
    from ferbench.harness.study.experiment import read_stored_spec
    from ferbench.harness.study.layout import experiment_paths
    from ferbench.harness.train.augment import InputAdapter

    spec = read_stored_spec(experiment)
    dataset = load_dataset(spec.data)
    val = load_splits(experiment_paths(experiment)["splits"])[0]["val"]
    model = create_backbone("small_cnn", 8)
    model.load_state_dict(weights)
    info = get_backbone_info("small_cnn")
    adapter = InputAdapter(48, info.in_chans, info.channel_order, info.mean, info.std)
    with torch.no_grad():
        logits = model.eval()(adapter(torch.from_numpy(dataset.images[val])))
    return torch.sigmoid(logits).numpy(), dataset.action_units[val]


def test_the_exported_au_model_predicts_the_labels_its_trial_tested(au_study, tmp_path, capsys):
    """`ferbench export` takes the Recommendation's best model by test macro F1 (the task's headline); its
    config names the labels and thresholds, and `ferbench predict` gives the trial's test probabilities."""
    import pandas as pd
    from PIL import Image

    from ferbench.harness.cli.main import main
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.study.experiment import read_stored_spec

    experiment = au_study.experiment_dir
    assert main(["export", str(experiment), "--format", "onnx", "--out", str(tmp_path / "model")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv")
    assert config["source"]["arm_id"] == trials.sort_values("test_macro_f1", ascending=False)["arm_id"].iloc[0]
    (folder,) = experiment.glob(f"{config['source']['arm_id']}_*")
    scored = json.loads((folder / "test_per_class.json").read_text())
    assert config["class_names"] == scored["class_names"] and config["thresholds"] == scored["threshold"]
    saved = np.load(folder / "test_predictions.npz")
    images = load_dataset(read_stored_spec(experiment).data).images[saved["indices"][:5]]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "model"), *map(str, files), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    got = np.array([[p["probabilities"][name] for name in config["class_names"]] for p in predictions])
    assert np.abs(got - saved["probabilities"][:5]).max() < 1e-5
    present = saved["probabilities"][:5] >= np.array(config["thresholds"])
    assert [p["predicted"] for p in predictions] == [
        "+".join(n for n, on in zip(config["class_names"], row) if on) or "none" for row in present]


def test_the_dataset_fingerprint_covers_its_action_units():
    from ferbench.harness.data.synthfer import generate_synthfer

    dataset = generate_synthfer(num_images=20, image_size=16, seed=0)
    before = dataset.fingerprint()
    dataset.action_units = dataset.action_units.copy()
    dataset.action_units[0, 0] ^= 1
    assert dataset.fingerprint() != before


def test_two_stage_fine_tunes_from_where_the_heads_val_loss_stopped_falling(au_study):
    import pandas as pd

    epochs = pd.read_csv(au_study.experiment_dir / "report" / "tables" / "epochs.csv")
    trials = pd.read_csv(au_study.experiment_dir / "report" / "tables" / "trials.csv")
    for arm_id, rows in epochs.groupby("arm_id"):
        rows = rows.sort_values("epoch")
        history = rows[["round_epoch", "val_loss"]].to_dict("records")
        trainable = dict(zip(rows["epoch"], _trainable(au_study.experiment_dir, arm_id)))
        total = int(trials.loc[trials["arm_id"] == arm_id, "params_total"].iloc[0])
        for epoch in range(1, 5):
            start = plateau_unfreeze_epoch(1, 4, [row for row in history if row["round_epoch"] < epoch])
            assert (trainable[epoch] == total) == (epoch >= start), (arm_id, epoch, start)
        assert trainable[1] < total  # the head alone first


def _trainable(experiment, arm_id: str) -> list[int]:
    (folder,) = experiment.glob(f"{arm_id}_*")
    return [json.loads(line)["params_trainable"] for line in (folder / "result.json").read_text().splitlines()]


@pytest.mark.e2e  # the paper's study on the embedded data, as a user runs it: about 1.5 minutes
def test_the_papers_au_study_runs_on_synthfer_by_overriding_data_and_size(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    command = [sys.executable, "-m", "ferbench", "run", "arsirii2023_au", "--set", "data.format=synthfer",
               "--set", "grid.backbone=[mobilenet_v1]", "--set", "train.epochs=2", "--set", "train.input_size=64",
               "--set", "resources.gpu=0", "--storage", str(tmp_path),
               # offline: synth-identity weights for the pretrained arms (small), one fold of three, fewer images
               "--set", "weights.source=synth-identity", "--set", "weights.synth_identity.num_images=600",
               "--set", "weights.synth_identity.epochs=1", "--set", "data.num_images=600", "--set", "split.folds=[0]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "FERBENCH_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (experiment,) = tmp_path.glob("arsirii2023_au-*")
    report = experiment / "report"
    per_au = pd.read_csv(report / "tables" / "per_au.csv")
    assert {"au", "precision", "recall", "f1", "support", "threshold", "train.loss"} <= set(per_au.columns)
    assert len(per_au) == 3 * 8 and set(per_au["train.loss"]) == {"bce", "lsep", "lpr"}
    text = (report / "report.md").read_text()
    for section in ("## Learning curves", "## Convergence and overfitting", "## Across seeds", "## Per action unit",
                    "## Recommendation", "## Data", "### Labels per image", "task multilabel, loss"):
        assert section in text, section
    for figure in ("curves.png", "mcr_mofr.png", "au_f1.png", "au_pr_curves.png", "label_statistics.png"):
        assert (report / "figures" / figure).stat().st_size > 1000, figure
    assert "Sample test images" not in text  # emotion probabilities mean nothing for a multi-label model


def _write_disfa_frames(root, subjects: int = 4, frames: int = 30):
    """DISFA as distributed, with the frames extracted to images: noise frames, random intensities."""
    import cv2

    from ferbench.harness.data.formats.disfa import DISFA_AUS

    generator = np.random.default_rng(0)
    for number in range(1, subjects + 1):
        code = f"SN{number:03d}"
        labels, images = root / "ActionUnit_Labels" / code, root / "Images" / code
        labels.mkdir(parents=True)
        images.mkdir(parents=True)
        intensities = generator.integers(0, 6, (frames, len(DISFA_AUS)))
        for column, au in enumerate(DISFA_AUS):
            (labels / f"{code}_au{au}.txt").write_text("".join(f"{f + 1},{intensities[f, column]}\n" for f in range(frames)))
        for frame in range(1, frames + 1):
            cv2.imwrite(str(images / f"{frame:05d}.png"), generator.integers(0, 255, (48, 64, 3), dtype=np.uint8))


@pytest.mark.e2e  # a whole study on a DISFA layout (the reader itself: tests/test_au_data.py)
def test_the_au_study_runs_on_disfa_as_distributed_with_subject_folds(tmp_path, monkeypatch):
    import pandas as pd

    from ferbench.harness.study.engine import run_study

    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    _write_disfa_frames(tmp_path / "DISFA")
    spec = load_spec("arsirii2023_au", [f"data.path={tmp_path / 'DISFA'}", "data.frame_size=32", "grid.backbone=[small_cnn]",
                                        "grid.init=[random]", "grid.train.loss=[lsep]", "train.epochs=1",
                                        "train.input_size=data", "train.freeze.policy=none", "resources.gpu=0",
                                        "resources.cpu=1", f"run.storage={tmp_path / 'results'}", "run.name=disfa"])
    outcome = run_study(spec)
    assert sorted(outcome.statuses.values()) == ["completed"] * 3  # one arm per subject-exclusive fold
    report = outcome.experiment_dir / "report"
    per_au = pd.read_csv(report / "tables" / "per_au.csv")
    assert sorted(set(per_au["fold"])) == [0, 1, 2] and list(per_au["au"][:8]) == ["AU1", "AU2", "AU4", "AU6", "AU9",
                                                                                   "AU12", "AU25", "AU26"]
    text = (report / "report.md").read_text()
    assert "no emotion labels" in text and "### Labels per image" in text and "### Images per class" not in text


def test_labels_without_a_positive_in_a_part_are_warned_about():
    task = get_task("multilabel", load_spec("quick", AU_STUDY))
    targets = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.uint8)
    splits = {0: {"train": np.array([0, 2]), "val": np.array([1]), "test": np.array([3])}}
    assert task.split_warnings(targets, ("AU1", "AU2"), splits) == [
        "label(s) AU2 have no positive image in the val part; their F1 there is 0 by definition",
        "label(s) AU2 have no positive image in the test part; their F1 there is 0 by definition"]
    folds = {0: splits[0], 1: {"train": np.array([0, 1]), "val": np.array([2]), "test": np.array([3])}}
    assert task.split_warnings(targets, ("AU1", "AU2"), folds)[2] == (
        "label(s) AU2 have no positive image in fold 1's train part; nothing to learn them from")
    assert get_task("classification").split_warnings(targets, ("AU1", "AU2"), splits) == []


def test_data_inspect_shows_each_labels_prevalence(tmp_path, monkeypatch, capsys):
    from ferbench.harness.cli.main import main

    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    _write_disfa_frames(tmp_path / "DISFA", subjects=2, frames=6)
    assert main(["data", "inspect", str(tmp_path / "DISFA"), "--json"]) == 0
    labels = json.loads(capsys.readouterr().out)["action_units"]
    counted = np.zeros(8, int)
    for code in ("SN001", "SN002"):
        for column, au in enumerate((1, 2, 4, 6, 9, 12, 25, 26)):
            lines = (tmp_path / "DISFA" / "ActionUnit_Labels" / code / f"{code}_au{au}.txt").read_text().split()
            counted[column] += sum(int(line.split(",")[1]) >= 2 for line in lines)
    assert labels["names"][0] == "AU1" and labels["images"]["all"] == 12 and labels["positives"]["all"] == counted.tolist()
    assert main(["data", "inspect", str(tmp_path / "DISFA")]) == 0
    text = capsys.readouterr().out
    assert "no emotion labels" in text and "Images per class" not in text
    assert f"  AU1        {counted[0]} ({counted[0] / 12:.1%})" in text
