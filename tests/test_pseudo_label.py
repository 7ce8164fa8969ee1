"""Pseudo-labelling: the selection rules on known probabilities, and real Ray studies on SynthFER
(rounds add what the threshold selects, hidden labels never train, complete round tables, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import pseudo_label as pl
from harness.engine import run_study
from harness.spec import SpecError, load_spec
from harness.trainable import FAIL_MARKER_ENV, FAIL_ONCE_ENV, ROUNDS_FILE

PL_ARM = "small_cnn_random_pseudo_label_s0"
STUDY = [
    "data.num_images=600", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "train.augment.enabled=false",
    "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline,pseudo_label]", "grid.exclude=[]",
    "split.unlabeled_fraction=0.3", "pseudo_label.threshold=0.3", "pseudo_label.max_rounds=2",
    "pseudo_label.epochs_per_round=1", "train.lr=3e-3", "resources.cpu=1", "run.keep_checkpoints=20",
]
METRICS = ["epoch", "round", "round_epoch", "train_size", "train_acc", "train_loss", "val_acc", "val_loss"]


# --- the rules, on known probabilities ------------------------------------------------------------


def test_selection_is_strictly_above_the_threshold_and_the_cap_keeps_the_most_confident():
    candidates = torch.tensor([10, 11, 12, 13, 14])
    probabilities = torch.tensor([[0.99, 0.01], [0.995, 0.005], [0.2, 0.8], [0.01, 0.99], [0.001, 0.999]])
    chosen = pl.select_confident(candidates, probabilities, 0.99)
    assert chosen.indices.tolist() == [11, 14] and chosen.labels.tolist() == [0, 1]  # 0.99 itself is not above
    loose = pl.select_confident(candidates, probabilities, 0.5)
    capped = pl.apply_cap(loose, cap=1, num_classes=2)
    assert capped.indices.tolist() == [11, 14]
    assert pl.apply_cap(loose, cap=2, num_classes=2, already=torch.tensor([1, 2])).indices.tolist() == [11]


def _probabilities(table: dict[int, list[float]]):
    return lambda idx: torch.tensor([table[int(i)] for i in idx])


def test_plan_fixes_labels_or_repredicts_and_says_why_it_stops():
    pool = torch.tensor([1, 2, 3])
    confident_1 = {1: [0.9, 0.1], 2: [0.4, 0.6], 3: [0.2, 0.8]}
    plan, candidates, _ = pl.plan_next_round(pool, _probabilities(confident_1), torch.tensor([], dtype=torch.long),
                                             torch.tensor([], dtype=torch.long), threshold=0.7, repredict=False, cap=None, num_classes=2)
    assert plan.pseudo_idx.tolist() == [1, 3] and plan.pseudo_labels.tolist() == [0, 1] and plan.stop_reason is None
    # Fixed labels: image 1 keeps label 0 and is not predicted again, even if it now looks like class 1.
    later = {1: [0.0, 1.0], 2: [0.05, 0.95], 3: [0.9, 0.1]}
    plan2, candidates2, _ = pl.plan_next_round(pool, _probabilities(later), plan.pseudo_idx, plan.pseudo_labels,
                                               threshold=0.7, repredict=False, cap=None, num_classes=2)
    assert candidates2.tolist() == [2] and plan2.added.tolist() == [2]
    assert plan2.pseudo_idx.tolist() == [1, 2, 3] and plan2.pseudo_labels.tolist() == [0, 1, 1]
    again = pl.plan_next_round(pool, _probabilities(later), plan2.pseudo_idx, plan2.pseudo_labels,
                               threshold=0.7, repredict=False, cap=None, num_classes=2)[0]
    assert again.stop_reason == "every pool image is pseudo-labelled already"
    # Re-predicted: the whole pool is the candidate set and labels follow the new model.
    fresh = pl.plan_next_round(pool, _probabilities(later), plan.pseudo_idx, plan.pseudo_labels,
                               threshold=0.7, repredict=True, cap=None, num_classes=2)[0]
    assert fresh.pseudo_idx.tolist() == [1, 2, 3] and fresh.pseudo_labels.tolist() == [1, 1, 0]
    unsure = {i: [0.5, 0.5] for i in (1, 2, 3)}
    nothing = pl.plan_next_round(pool, _probabilities(unsure), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                                 threshold=0.99, repredict=False, cap=None, num_classes=2)[0]
    assert nothing.stop_reason.startswith("no prediction above the threshold 0.99 among the 3 pool images")
    same = pl.plan_next_round(pool, _probabilities(later), fresh.pseudo_idx, fresh.pseudo_labels,
                              threshold=0.7, repredict=True, cap=None, num_classes=2)[0]
    assert same.stop_reason == "the re-predicted pseudo-labels are the same as the last round's"


def test_training_targets_never_read_the_pool_labels():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    train, pool = torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    pseudo_idx, pseudo_labels = torch.tensor([6, 7]), torch.tensor([2, 2])  # 6 is wrong (true 0), 7 wrong (true 1)
    indices, targets = pl.training_targets(labels, train, pseudo_idx, pseudo_labels)
    scrambled = labels.clone()
    scrambled[pool] = torch.tensor([1, 1, 1])
    indices_2, targets_2 = pl.training_targets(scrambled, train, pseudo_idx, pseudo_labels)
    assert torch.equal(indices, indices_2) and torch.equal(targets, targets_2)
    assert indices.tolist() == [0, 1, 2, 6, 7] and targets[[6, 7]].tolist() == [2, 2]
    assert targets[[3, 4, 5]].tolist() == [pl.NOT_A_TARGET] * 3  # val/test/unpicked pool: untrainable
    with pytest.raises(IndexError):  # cross_entropy refuses them, so a bug cannot quietly train on them
        torch.nn.functional.cross_entropy(torch.zeros(1, 3), targets[[5]])
    overall, per_class = pl.pseudo_precision(torch.tensor([2, 2, 1]), torch.tensor([2, 0, 1]), 3)
    assert overall == pytest.approx(2 / 3) and per_class[1:] == [1.0, 0.5] and np.isnan(per_class[0])


def test_spec_options_are_validated():
    assert load_spec("quick", ["grid.variant=[pseudo_label]", "grid.exclude=[]"]).split.unlabeled_fraction == 0.1
    with pytest.raises(SpecError, match="split.unlabeled_fraction: 0 leaves variant pseudo_label no unlabeled pool"):
        load_spec("quick", ["grid.variant=[pseudo_label]", "split.unlabeled_fraction=0"])
    with pytest.raises(SpecError, match="pseudo_label.unlabeled_path and split.unlabeled_fraction \\(0.2\\) both give"):
        load_spec("quick", ["grid.variant=[pseudo_label]", "pseudo_label.unlabeled_path=/data/pool", "split.unlabeled_fraction=0.2"])
    external = load_spec("quick", ["grid.variant=[pseudo_label]", "pseudo_label.unlabeled_path=/data/pool"])
    assert external.split.unlabeled_fraction == 0  # the external pool replaces the held-out share
    with pytest.raises(SpecError, match="pseudo_label.threshold"):
        load_spec("quick", ["pseudo_label.threshold=1.5"])


# --- real studies ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("pl")
    return run_study(load_spec("quick", [*STUDY, f"run.storage={storage}", "run.name=plain"]))


def _trial_dir(outcome, arm: str):
    (folder,) = [p for p in outcome.experiment_dir.glob(f"{arm}_*") if p.is_dir()]
    return folder


def test_rounds_add_exactly_what_the_teachers_predictions_select(study):
    from backbones import create_backbone, get_backbone_info
    from harness.augment import InputAdapter
    from harness.loaders import load_dataset
    from harness.splits import load_splits
    from harness.training import predict

    spec = load_spec("quick", STUDY)
    folder = _trial_dir(study, PL_ARM)
    teacher_checkpoint = [p for p in folder.glob("checkpoint_*")
                          if torch.load(p / "checkpoint.pt", weights_only=True)["epoch"] == spec.train.epochs]
    state = torch.load(teacher_checkpoint[0] / "checkpoint.pt", weights_only=True)
    assert state["rounds"]["round"] == 1 and state["rounds"]["round_epoch"] == 0  # the next row starts the student
    dataset = load_dataset(spec.data)
    pool = torch.from_numpy(load_splits(study.experiment_dir / "ferbench" / "splits.npz")[0]["unlabeled"])
    model = create_backbone("small_cnn", 7)
    model.load_state_dict(state["model"])
    info = get_backbone_info("small_cnn")
    adapter = InputAdapter(24, info.in_chans, info.channel_order, info.mean, info.std)
    probabilities = torch.softmax(predict(model, torch.from_numpy(dataset.images), pool, batch_size=256, adapter=adapter,
                                          device=torch.device("cpu")), dim=1)
    expected = pool[probabilities.max(1).values > spec.pseudo_label.threshold]
    stored = np.load(folder / "pseudo_label_round1.npz")
    assert np.allclose(stored["probabilities"], probabilities.numpy(), atol=1e-6)
    assert 0 < len(expected) < len(pool)  # the check is not vacuous
    assert stored["pseudo_indices"].tolist() == sorted(expected.tolist())
    assert stored["pseudo_labels"].tolist() == probabilities.argmax(1)[probabilities.max(1).values > spec.pseudo_label.threshold].tolist()
    epochs = pd.read_csv(study.report_dir / "tables" / "epochs.csv")
    student = epochs[(epochs.arm_id == PL_ARM) & (epochs["round"] == 1)]
    labelled = epochs[(epochs.arm_id == PL_ARM) & (epochs["round"] == 0)]["train_size"].iloc[0]
    assert (student["train_size"] == labelled + len(expected)).all()


def test_round_tables_are_complete(study):
    rounds = pd.read_csv(study.report_dir / "tables" / "pseudo_label_rounds.csv")
    trials = pd.read_csv(study.report_dir / "tables" / "trials.csv").set_index("arm_id")
    assert set(rounds["arm_id"]) == {PL_ARM}
    assert trials.loc[PL_ARM, "status"] == "completed" and trials.loc[PL_ARM, "pl_rounds"] >= 1
    assert rounds["round"].tolist() == list(range(int(trials.loc[PL_ARM, "pl_rounds"]) + 1))
    added_columns = [c for c in rounds.columns if c.startswith("added_") and c != "added_precision"]
    assert len(added_columns) == 7
    assert (rounds[added_columns].sum(axis=1) == rounds["images_added"]).all()
    assert (rounds["pseudo_labelled"] == rounds["images_added"].cumsum()).all()  # labels fixed once added
    assert rounds[["val_acc", "val_macro_f1", "test_acc", "test_macro_f1"]].notna().all().all()
    assert rounds.loc[rounds["round"] > 0, "pseudo_precision"].between(0, 1).all()
    assert rounds["stop_reason"].fillna("").astype(bool).sum() == 1
    per_class = pd.read_csv(study.report_dir / "tables" / "pseudo_label_per_class.csv")
    sums = per_class.groupby("round")["pseudo_labelled"].sum()
    assert sums.tolist() == rounds["pseudo_labelled"].tolist()
    stored = json.loads((_trial_dir(study, PL_ARM) / ROUNDS_FILE).read_text())
    assert all(np.array(r["test_confusion_matrix"]).sum() == sum(r["test_per_class"]["support"]) for r in stored["rounds"])
    # The trial's final test metrics are the last round's; epochs run continuously across rounds.
    assert trials.loc[PL_ARM, "test_acc"] == pytest.approx(rounds["test_acc"].iloc[-1])
    epochs = pd.read_csv(study.report_dir / "tables" / "epochs.csv")
    mine = epochs[epochs.arm_id == PL_ARM]
    assert mine["epoch"].tolist() == list(range(len(mine)))
    assert mine.groupby("round")["round_epoch"].apply(list).tolist() == [[0, 1, 2]] + [[0, 1]] * (len(rounds) - 1)
    assert (epochs[epochs.arm_id != PL_ARM]["round"] == 0).all()
    report = (study.report_dir / "report.md").read_text()
    assert "## Pseudo-labelling (Arsirii & Petrosiuk 2023)" in report and "stopped:" in report
    assert (study.report_dir / "figures" / "pseudo_label_rounds.png").stat().st_size > 1000
    from reports.pseudo_label_section import round_confusion

    confusion, units = round_confusion(study.experiment_dir)  # drawn as figures/pseudo_label_confusion.png
    assert [confusion[u]["matrix"] for u in units["arm_id"]] == [r["test_confusion_matrix"] for r in stored["rounds"]]
    assert units["variant"].tolist() == [f"pseudo_label round {r['round']}" for r in stored["rounds"]]
    assert "figures/pseudo_label_confusion.png" in report and "figures/pseudo_label_per_class.png" in report
    assert (study.report_dir / "figures" / "pseudo_label_per_class.png").stat().st_size > 5000
    assert (study.report_dir / "figures" / "pseudo_label_confusion.png").stat().st_size > 5000
    differences = pd.read_csv(study.report_dir / "tables" / "differences.csv")
    assert "pseudo_label − baseline" in set(differences["comparison"])
    mcr = pd.read_csv(study.report_dir / "tables" / "pseudo_label_mcr_mofr.csv")
    assert set(mcr["round"]) == set(rounds["round"]) and mcr["value"].notna().any()


def test_failed_trial_resumes_in_the_right_round_with_identical_results(study, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAIL_ONCE_ENV, "3")  # after round 1's first row (its evaluation before training)
    monkeypatch.setenv(FAIL_MARKER_ENV, str(markers))
    retried = run_study(load_spec("quick", [*STUDY, f"run.storage={tmp_path}", "run.name=retried"]))
    assert [p.name for p in markers.iterdir()] == [PL_ARM]  # the baseline arm has no epoch 3
    assert retried.statuses[PL_ARM] == "completed"
    tables = {name: [pd.read_csv(o.report_dir / "tables" / f"{name}.csv") for o in (study, retried)]
              for name in ("epochs", "pseudo_label_rounds", "trials")}
    first, second = tables["epochs"]
    assert len(first) == len(second)
    pd.testing.assert_frame_equal(first.sort_values(["arm_id", "epoch"])[["arm_id", *METRICS]].reset_index(drop=True),
                                  second.sort_values(["arm_id", "epoch"])[["arm_id", *METRICS]].reset_index(drop=True))
    columns = ["round", "images_added", "pseudo_labelled", "pseudo_precision", "val_acc", "test_acc", "test_macro_f1", "stop_reason"]
    pd.testing.assert_frame_equal(tables["pseudo_label_rounds"][0][columns], tables["pseudo_label_rounds"][1][columns])
    trials = tables["trials"][1].set_index("arm_id")
    assert float(trials.loc[PL_ARM, "resumed_at_epochs"]) == 4  # resumed inside round 1, after its first row


def test_hidden_labels_of_the_pool_never_reach_training(tmp_path):
    """The same trial with the pool's true labels changed trains identically: only the reported
    precision of the pseudo-labels, which compares them with those labels, differs."""
    import ray
    from ray import tune

    from harness.engine import init_ray
    from harness.preflight import run_preflight
    from harness.trainable import StudyPayload, run_trial

    spec = load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]"])
    preflight = run_preflight(spec)
    (arm,) = preflight.runnable_arms
    pool = preflight.splits[0]["unlabeled"]
    outcomes = []
    for name, shift in (("true", 0), ("shifted", 3)):
        labels = preflight.dataset.labels.copy()
        labels[pool] = (labels[pool] + shift) % 7
        payload = StudyPayload(spec=spec.model_dump(mode="json"), images=preflight.dataset.images, labels=labels,
                               class_names=tuple(preflight.dataset.class_names), splits=preflight.splits, weight_files={})
        init_ray(num_cpus=2)
        tuner = tune.Tuner(tune.with_parameters(run_trial, payload=payload), param_space={"arm": arm},
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0,
                                                     sync_config=tune.SyncConfig(sync_artifacts=True)))
        result = tuner.fit()[0]
        assert result.error is None
        folder = Path(result.path)
        history = pd.DataFrame(json.loads(line) for line in (folder / "result.json").read_text().splitlines())
        rounds = json.loads((folder / ROUNDS_FILE).read_text())["rounds"]
        outcomes.append((history, pd.DataFrame(rounds)))
    ray.shutdown()
    (history, rounds), (history_2, rounds_2) = outcomes
    pd.testing.assert_frame_equal(history[METRICS], history_2[METRICS])
    same = ["round", "images_added", "pseudo_labelled", "val_acc", "test_acc", "test_macro_f1"]
    pd.testing.assert_frame_equal(rounds[same], rounds_2[same])
    assert (rounds["images_added"] > 0).any()
    trained = rounds["round"] > 0
    assert not np.allclose(rounds.loc[trained, "pseudo_precision"], rounds_2.loc[trained, "pseudo_precision"])


def test_a_teacher_sure_of_nothing_ends_the_trial_after_round_0(tmp_path):
    outcome = run_study(load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "pseudo_label.threshold=0.999999",
                                            f"run.storage={tmp_path}", "run.name=unsure"]))
    assert outcome.statuses == {PL_ARM: "completed"}
    rounds = pd.read_csv(outcome.report_dir / "tables" / "pseudo_label_rounds.csv")
    assert rounds["round"].tolist() == [0] and rounds["images_added"].tolist() == [0]
    assert rounds["stop_reason"].iloc[0]  # the report says why no student trained
    trials = pd.read_csv(outcome.report_dir / "tables" / "trials.csv").set_index("arm_id")
    assert trials.loc[PL_ARM, "pl_rounds"] == 0 and trials.loc[PL_ARM, "test_acc"] == pytest.approx(rounds["test_acc"].iloc[0])
    epochs = pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")
    assert epochs["epoch"].tolist() == [0, 1, 2] and (epochs["round"] == 0).all()


def test_a_pool_used_up_in_round_1_stops_the_rounds_there(tmp_path):
    outcome = run_study(load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "pseudo_label.threshold=0.01",
                                            f"run.storage={tmp_path}", "run.name=greedy"]))
    assert outcome.statuses == {PL_ARM: "completed"}
    rounds = pd.read_csv(outcome.report_dir / "tables" / "pseudo_label_rounds.csv")
    from harness.splits import load_splits

    pool = len(load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")[0]["unlabeled"])
    assert rounds["round"].tolist() == [0, 1] and rounds["images_added"].tolist() == [0, pool] and pool > 0
    assert rounds["stop_reason"].iloc[-1]  # no images left to label: no second student
