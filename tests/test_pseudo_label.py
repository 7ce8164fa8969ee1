"""Pseudo-labelling: the selection rules on known probabilities, and real Ray studies on SynthFER
(rounds add what the threshold selects, hidden labels never train, complete round tables, the round
and epoch validation picks are the ones tested and reported, resume)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import PL_ARM, PL_STUDY as STUDY, only_trial_folder as _trial_dir
from ferbench.harness.variants.pseudo_label import selection as pl
from ferbench.harness.study.engine import run_study
from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.study.layout import ROUNDS_FILE, SELECTED_WEIGHTS_FILE
from ferbench.harness.train.trial import FAIL_MARKER_ENV, FAIL_ONCE_ENV

BASELINE_ARM = "small_cnn_random_baseline_s0"
METRICS = ["epoch", "round", "round_epoch", "train_size", "train_acc", "train_loss", "val_acc", "val_loss"]
# The module's study tests the best-val epoch of every round, and some epochs train on labels that are
# all class 0, which wrecks the model by construction, so what validation must pick is known: the
# teacher's epoch 1 or 2 (3 spoiled), round 1's epoch 1 (2 and 3 spoiled), and never round 2 (all spoiled).
PICKED = [*STUDY, "data.num_images=1200", "train.epochs=3", "train.select=best_val", "pseudo_label.epochs_per_round=3"]
SPOILED = frozenset({(0, 3), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)})  # (round, round_epoch)


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


def _spoiling_trial(run_trial, spoiled: frozenset):
    """``run_trial``, except that its (round, round_epoch) epochs in ``spoiled`` train on all-class-0 labels."""

    def trial(config, payload):
        from ferbench.harness.train import trial as trainable

        original = trainable._Trial.run_epoch

        def run_epoch(self, epoch, round_no, round_epoch, train_idx, targets, *rest):
            spoil = (round_no, round_epoch) in spoiled
            return original(self, epoch, round_no, round_epoch, train_idx, torch.zeros_like(targets) if spoil else targets, *rest)

        trainable._Trial.run_epoch = run_epoch
        try:
            return run_trial(config, payload)
        finally:  # a reused worker runs the next trial unspoiled
            trainable._Trial.run_epoch = original

    return trial


def run_spoiled_study(overrides: list[str]):
    """``run_study`` of the module's study (``PICKED`` + ``overrides``) with the ``SPOILED`` epochs."""
    import ray.cloudpickle

    from ferbench.harness.train import trial as trainable

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainable, "run_trial", _spoiling_trial(trainable.run_trial, SPOILED))
        return run_study(load_spec("quick", [*PICKED, *overrides]))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("pl")
    return run_spoiled_study([f"run.storage={storage}", "run.name=plain"])


def test_rounds_add_exactly_what_the_teachers_predictions_select(study):
    from ferbench.backbones import create_backbone, get_backbone_info
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.data.splits import load_splits
    from ferbench.harness.train.loop import predict

    spec = load_spec("quick", PICKED)
    folder = _trial_dir(study, PL_ARM)
    states = {state["epoch"]: state for state in (torch.load(p / "checkpoint.pt", weights_only=True) for p in folder.glob("checkpoint_*"))}
    state = states[spec.train.epochs]
    assert state["rounds"]["round"] == 1 and state["rounds"]["round_epoch"] == 0  # the next row starts the student
    # train.select best_val: the teacher that predicts the pool is its best-val epoch, not the (spoiled) last one.
    chosen = state["rounds"]["records"][0]["selected_epoch"]
    assert chosen < spec.train.epochs
    assert all(torch.equal(state["model"][k], states[chosen]["model"][k]) for k in state["model"])
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
    # The trial's final test metrics are the selected round's; epochs run continuously across rounds.
    assert trials.loc[PL_ARM, "test_acc"] == pytest.approx(rounds.loc[rounds["selected"], "test_acc"].item())
    epochs = pd.read_csv(study.report_dir / "tables" / "epochs.csv")
    mine = epochs[epochs.arm_id == PL_ARM]
    assert mine["epoch"].tolist() == list(range(len(mine)))
    assert mine.groupby("round")["round_epoch"].apply(list).tolist() == [[0, 1, 2, 3]] * len(rounds)
    assert (epochs[epochs.arm_id != PL_ARM]["round"] == 0).all()
    report = (study.report_dir / "report.md").read_text()
    assert "## Pseudo-labelling (Arsirii & Petrosiuk 2023)" in report and "stopped:" in report
    assert (study.report_dir / "figures" / "pseudo_label_rounds.png").stat().st_size > 1000
    from ferbench.reports.variants.pseudo_label import round_confusion

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


def _reevaluated(outcome, arm: str) -> np.ndarray:
    """Test-set probabilities of the arm's kept ``selected_weights.pt``, computed here from scratch."""
    from ferbench.backbones import create_backbone, get_backbone_info
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.data.splits import load_splits
    from ferbench.harness.train.loop import predict

    model = create_backbone("small_cnn", 7)
    model.load_state_dict(torch.load(_trial_dir(outcome, arm) / SELECTED_WEIGHTS_FILE, weights_only=True))
    info = get_backbone_info("small_cnn")
    test = torch.from_numpy(load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")[0]["test"])
    images = torch.from_numpy(load_dataset(load_spec("quick", PICKED).data).images)
    logits = predict(model, images, test, batch_size=256, adapter=InputAdapter(24, info.in_chans, info.channel_order, info.mean, info.std),
                     device=torch.device("cpu"))
    return torch.softmax(logits, dim=1).numpy()


def test_the_arm_reports_the_round_and_epoch_that_validation_picks(study):
    trials = pd.read_csv(study.report_dir / "tables" / "trials.csv").set_index("arm_id")
    epochs = pd.read_csv(study.report_dir / "tables" / "epochs.csv")
    folder = _trial_dir(study, PL_ARM)
    stored = json.loads((folder / ROUNDS_FILE).read_text())
    records = {r["round"]: r for r in stored["rounds"]}
    assert sorted(records) == [0, 1, 2]
    # Round 2 trained on spoiled labels only, so validation never picks it. Whether the teacher or
    # round 1 wins is up to the numbers (they differ between CPUs with and without AVX-512); the
    # rule is the best validation macro F1, ties to the earlier round.
    chosen = max(records, key=lambda n: (records[n]["val_macro_f1"], -n))
    assert chosen != 2 and records[chosen]["val_macro_f1"] > records[2]["val_macro_f1"]
    assert records[2]["test_acc"] != records[chosen]["test_acc"]  # the choice changes the reported numbers
    # The arm's result is the chosen round, the last round's is kept beside it.
    assert stored["selected_round"] == chosen
    row = trials.loc[PL_ARM]
    assert (row["pl_selected_round"], row["pl_last_round"], row["pl_rounds"]) == (chosen, 2, 2)
    for name in ("test_acc", "test_loss", "test_macro_f1", "test_weighted_f1", "test_balanced_acc"):
        assert row[name] == pytest.approx(records[chosen][name]), name
    assert row["last_round_test_acc"] == pytest.approx(records[2]["test_acc"])
    # So are its predictions, per-class scores and kept weights (re-evaluated here).
    assert (folder / "test_predictions.npz").read_bytes() == (folder / f"test_predictions_round{chosen}.npz").read_bytes()
    assert (folder / "test_predictions.npz").read_bytes() != (folder / "test_predictions_round2.npz").read_bytes()
    per_class = json.loads((folder / "test_per_class.json").read_text())
    assert per_class["f1"] == records[chosen]["test_per_class"]["f1"]
    assert per_class["confusion_matrix"] == records[chosen]["test_confusion_matrix"]
    stored_probabilities = np.load(folder / "test_predictions.npz")["probabilities"]
    assert np.allclose(_reevaluated(study, PL_ARM), stored_probabilities, atol=1e-6)
    # train.select best_val: each round tested its best-val epoch (ties: the earlier), never epoch 0.
    mine = epochs[epochs.arm_id == PL_ARM]
    for round_no, record in records.items():
        trained = mine[(mine["round"] == round_no) & (mine["round_epoch"] > 0)]
        best = trained.loc[trained["val_acc"].idxmax()]  # idxmax: the first of equal maxima
        assert record["selected_epoch"] == best["round_epoch"]
        assert record["val_acc"] == pytest.approx(best["val_acc"])  # the tested weights are that epoch's
    assert records[0]["selected_epoch"] < 3 and records[1]["selected_epoch"] == 1  # never a spoiled epoch
    assert row["selected_epoch"] == records[chosen]["selected_epoch"]
    # The baseline arm (= round 0) too: its test metrics are those of its kept best-val weights.
    base = trials.loc[BASELINE_ARM]
    assert base["selected_epoch"] == records[0]["selected_epoch"] and base["test_acc"] == pytest.approx(records[0]["test_acc"])
    probabilities = _reevaluated(study, BASELINE_ARM)
    assert np.allclose(probabilities, np.load(_trial_dir(study, BASELINE_ARM) / "test_predictions.npz")["probabilities"], atol=1e-6)
    targets = np.load(_trial_dir(study, BASELINE_ARM) / "test_predictions.npz")["targets"]
    assert (probabilities.argmax(1) == targets).mean() == pytest.approx(base["test_acc"])
    # The report marks the round and sets every round, and the selected one, against the baseline.
    versus = pd.read_csv(study.report_dir / "tables" / "pseudo_label_vs_baseline.csv")
    accuracy = versus[versus["metric"] == "test_acc"].set_index("round")["mean_diff"]
    assert accuracy.index.tolist() == ["0", "1", "2", "selected"]
    assert accuracy["0"] == pytest.approx(0)  # the teacher is the baseline, number for number
    assert accuracy["selected"] == pytest.approx(accuracy[str(chosen)]) == pytest.approx(row["test_acc"] - base["test_acc"])
    assert accuracy["1"] == pytest.approx(records[1]["test_acc"] - base["test_acc"])
    assert (versus["n"] == 1).all() and not versus["claim"].any()  # one seed: no claim
    differences = pd.read_csv(study.report_dir / "tables" / "differences.csv")
    headline = differences[(differences["comparison"] == "pseudo_label − baseline") & (differences["metric"] == "test_acc")]
    assert headline["mean_diff"].item() == pytest.approx(accuracy["selected"])
    report = (study.report_dir / "report.md").read_text()
    assert "the round with the best validation macro F1" in report and "| ✓ |" in report
    assert "test acc − baseline" in report


@pytest.mark.e2e  # a second whole study (resuming itself: test_study_e2e's in-process resume test)
def test_failed_trial_resumes_in_the_right_round_with_identical_results(study, tmp_path, monkeypatch):
    """Fails inside round 1 after its second epoch: with only the newest checkpoint kept, that of the
    round's best epoch (its first) is gone, so the retry can test it only from the weights carried along
    (the epochs after the failure are spoiled: without them it would test a worse one)."""
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAIL_ONCE_ENV, "6")  # rows: round 0 is epochs 0-3, round 1 epochs 4 (evaluation only) to 7
    monkeypatch.setenv(FAIL_MARKER_ENV, str(markers))
    retried = run_spoiled_study([f"run.storage={tmp_path}", "run.name=retried", "run.keep_checkpoints=1", "grid.variant=[pseudo_label]"])
    assert [p.name for p in markers.iterdir()] == [PL_ARM]
    assert retried.statuses[PL_ARM] == "completed"
    assert len(list(_trial_dir(retried, PL_ARM).glob("checkpoint_*"))) == 1  # rotation was on
    tables = {name: [pd.read_csv(o.report_dir / "tables" / f"{name}.csv") for o in (study, retried)]
              for name in ("epochs", "pseudo_label_rounds", "trials")}
    first, second = (frame[frame["arm_id"] == PL_ARM] for frame in tables["epochs"])
    assert len(first) == len(second)
    pd.testing.assert_frame_equal(first.sort_values("epoch")[METRICS].reset_index(drop=True),
                                  second.sort_values("epoch")[METRICS].reset_index(drop=True))
    columns = ["round", "selected_epoch", "selected", "images_added", "pseudo_labelled", "pseudo_precision", "val_acc", "test_acc",
               "test_macro_f1", "stop_reason"]
    pd.testing.assert_frame_equal(tables["pseudo_label_rounds"][0][columns], tables["pseudo_label_rounds"][1][columns])
    outcome = ["arm_id", "test_acc", "test_loss", "test_macro_f1", "selected_epoch", "pl_selected_round", "last_round_test_acc"]
    plain, again = (frame.set_index("arm_id").loc[[PL_ARM], outcome[1:]] for frame in tables["trials"])
    pd.testing.assert_frame_equal(plain, again, check_dtype=False)
    trials = tables["trials"][1].set_index("arm_id")
    assert float(trials.loc[PL_ARM, "resumed_at_epochs"]) == 7  # resumed inside round 1, after its third row
    # Round 1 tested its first epoch, whose checkpoint was rotated out before the failure.
    assert tables["pseudo_label_rounds"][1].set_index("round").loc[1, "selected_epoch"] == 1


def _with_pool_labels_shifted(run_trial, pool: np.ndarray):
    """``run_trial`` on the payload's labels with those of the pool shifted by ``config["shift"]`` classes."""

    def trial(config, payload):
        import dataclasses

        labels = payload.labels.copy()
        labels[pool] = (labels[pool] + config["shift"]) % 7
        return run_trial({"arm": config["arm"]}, dataclasses.replace(payload, labels=labels))

    return trial


@pytest.mark.e2e  # two more whole studies (the pool's hiding in one: the module's study above)
def test_hidden_labels_of_the_pool_never_reach_training_and_a_used_up_pool_stops_the_rounds(tmp_path, local_ray):
    """The same trial with the pool's true labels changed trains identically: only the reported
    precision of the pseudo-labels, which compares them with those labels, differs. A threshold this
    low labels the whole pool in round 1 (so every pool image trains), and no second student follows.
    Both trials (true labels, labels shifted by 3 classes) run side by side in one Tuner."""
    import ray.cloudpickle
    from ray import tune

    from ferbench.harness.study.preflight import run_preflight
    from ferbench.harness.train.trial import StudyPayload, run_trial

    spec = load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "pseudo_label.threshold=0.01"])
    preflight = run_preflight(spec)
    (arm,) = preflight.runnable_arms
    pool = preflight.splits[0]["unlabeled"]
    payload = StudyPayload(spec=spec.model_dump(mode="json"), images=preflight.dataset.images, labels=preflight.dataset.labels,
                           class_names=tuple(preflight.dataset.class_names), splits=preflight.splits, weight_files={})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    tuner = tune.Tuner(tune.with_parameters(_with_pool_labels_shifted(run_trial, pool), payload=payload),
                       param_space={"arm": arm, "shift": tune.grid_search([0, 3])},
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="hidden", verbose=0,
                                                 sync_config=tune.SyncConfig(sync_artifacts=True)))
    results = {result.config["shift"]: result for result in tuner.fit()}
    outcomes = []
    for shift in (0, 3):
        assert results[shift].error is None
        folder = Path(results[shift].path)
        history = pd.DataFrame(json.loads(line) for line in (folder / "result.json").read_text().splitlines())
        stored = json.loads((folder / ROUNDS_FILE).read_text())
        outcomes.append((history, pd.DataFrame(stored["rounds"])))
    (history, rounds), (history_2, rounds_2) = outcomes
    pd.testing.assert_frame_equal(history[METRICS], history_2[METRICS])
    same = ["round", "images_added", "pseudo_labelled", "val_acc", "test_acc", "test_macro_f1"]
    pd.testing.assert_frame_equal(rounds[same], rounds_2[same])
    trained = rounds["round"] > 0
    assert not np.allclose(rounds.loc[trained, "pseudo_precision"], rounds_2.loc[trained, "pseudo_precision"])
    assert rounds["round"].tolist() == [0, 1] and rounds["images_added"].tolist() == [0, len(pool)] and len(pool) > 0
    assert stored["finished"] and stored["stop_reason"] == "every pool image is pseudo-labelled already"


def test_a_teacher_sure_of_nothing_ends_the_trial_after_round_0(reference_study):
    """The session's reference experiment: its pseudo-labelling arms ask for a confidence above 0.999999
    (helpers.REFERENCE), which no prediction of its teachers reaches."""
    outcome = reference_study
    assert outcome.statuses[PL_ARM] == "completed"
    rounds = pd.read_csv(outcome.report_dir / "tables" / "pseudo_label_rounds.csv")
    rounds = rounds[rounds["arm_id"] == PL_ARM]
    assert rounds["round"].tolist() == [0] and rounds["images_added"].tolist() == [0]
    assert rounds["stop_reason"].iloc[0]  # the report says why no student trained
    trials = pd.read_csv(outcome.report_dir / "tables" / "trials.csv").set_index("arm_id")
    assert trials.loc[PL_ARM, "pl_rounds"] == 0 and trials.loc[PL_ARM, "test_acc"] == pytest.approx(rounds["test_acc"].iloc[0])
    assert trials.loc[PL_ARM, "pl_selected_round"] == trials.loc[PL_ARM, "pl_last_round"] == 0
    assert trials.loc[PL_ARM, "selected_epoch"] == 3  # train.select last: the round's last epoch
    epochs = pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")
    epochs = epochs[epochs["arm_id"] == PL_ARM]
    assert epochs["epoch"].tolist() == [0, 1, 2, 3] and (epochs["round"] == 0).all()
