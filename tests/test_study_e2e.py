"""End-to-end studies on a real local Ray: report files, determinism, retry from checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ferbench.harness.study.engine import run_study
from ferbench.harness.spec import load_spec
from ferbench.harness.data.splits import load_splits
from ferbench.reports.collect import collect_per_class
from ferbench.harness.train.trial import FAIL_MARKER_ENV, FAIL_ONCE_ENV

METRICS = ["train_acc", "train_loss", "val_acc", "val_loss"]
TINY = [
    "data.num_images=240", "data.image_size=24", "train.epochs=2", "train.batch_size=32",
    "grid.backbone=[small_cnn]", "grid.init=[random,pretrained]", "grid.seed=[0,1]", "grid.exclude=[]",
    "grid.variant=[baseline]",
    "resources.cpu=1", "run.allow_unavailable=true", "weights.source=published",
]


def tiny_spec(storage, name: str, *extra: str):
    return load_spec("quick", [*TINY, f"run.storage={storage}", f"run.name={name}", *extra])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    outcome = run_study(tiny_spec(storage, "baseline"))
    return outcome


def read_tables(outcome):
    tables = outcome.report_dir / "tables"
    return pd.read_csv(tables / "epochs.csv"), pd.read_csv(tables / "trials.csv")


def test_study_writes_report_with_every_arm(baseline_run):
    epochs, trials = read_tables(baseline_run)
    assert baseline_run.statuses == {
        "small_cnn_random_baseline_s0": "completed",
        "small_cnn_random_baseline_s1": "completed",
        "small_cnn_pretrained_baseline_s0": "unavailable",
        "small_cnn_pretrained_baseline_s1": "unavailable",
    }
    # One row per trial × epoch, epoch 0 (before training) included.
    assert sorted(epochs.groupby("arm_id")["epoch"].apply(list).tolist()) == [[0, 1, 2], [0, 1, 2]]
    expected = {"trial_id", "backbone", "init", "variant", "seed", "epoch", "train_acc", "train_loss",
                "val_acc", "val_loss", "lr", "epoch_time_s", "train_images_per_s"}
    assert expected <= set(epochs.columns)
    assert epochs[METRICS].notna().all().all()
    assert (epochs.loc[epochs.epoch > 0, "train_images_per_s"] > 0).all()
    completed = trials[trials.status == "completed"]
    assert completed[["test_acc", "test_macro_f1", "final_val_acc"]].notna().all().all()
    assert trials.loc[trials.status == "unavailable", "error"].str.contains("weights.files.small_cnn").all()
    report = (baseline_run.report_dir / "report.md").read_text()
    for arm in baseline_run.statuses:
        assert arm in report
    assert "## Data" in report and "### Images per class, per split" in report and "unavailable" in report
    assert (baseline_run.report_dir / "figures" / "class_counts.png").stat().st_size > 1000


def test_per_class_results_agree_with_the_trials_macro_f1(baseline_run):
    _, trials = read_tables(baseline_run)
    per_class = pd.read_csv(baseline_run.report_dir / "tables" / "per_class.csv")
    completed = trials[trials.status == "completed"].set_index("arm_id")
    assert set(per_class["arm_id"]) == set(completed.index)
    _, confusion = collect_per_class(baseline_run.experiment_dir)
    for arm_id, rows in per_class.groupby("arm_id"):
        assert len(rows) == 7 and rows["f1"].between(0, 1).all()
        matrix = np.array(confusion[arm_id]["matrix"])
        assert matrix.sum(axis=1).tolist() == rows["support"].tolist()
        assert np.trace(matrix) / matrix.sum() == pytest.approx(completed.loc[arm_id, "test_acc"], abs=1e-6)
        seen = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0  # torchmetrics' macro F1 skips classes never seen
        assert rows["f1"][seen].mean() == pytest.approx(completed.loc[arm_id, "test_macro_f1"], abs=1e-6)
        assert rows["support"].sum() == 48  # the test part: 20% of 240 images
    for trial_dir in baseline_run.experiment_dir.glob("small_cnn_random_*"):
        assert (trial_dir / "test_predictions.npz").is_file()


def test_same_seed_gives_identical_epochs(baseline_run, tmp_path):
    again = run_study(tiny_spec(tmp_path, "again"))
    first, _ = read_tables(baseline_run)
    second, _ = read_tables(again)
    key = ["arm_id", "epoch"]
    pd.testing.assert_frame_equal(
        first.sort_values(key)[key + METRICS].reset_index(drop=True),
        second.sort_values(key)[key + METRICS].reset_index(drop=True),
    )
    # Different seeds really differ (the comparison above is not vacuous).
    s0 = first[first.seed == 0].sort_values("epoch")[METRICS].to_numpy()
    s1 = first[first.seed == 1].sort_values("epoch")[METRICS].to_numpy()
    assert not (s0 == s1).all()


def _trial_pids(outcome) -> dict[str, set[int]]:
    """Trial folder → the worker processes that reported its rows (Tune records ``pid`` in each row)."""
    return {
        result.parent.name.rsplit("_", 2)[0]: {json.loads(line)["pid"] for line in result.read_text().splitlines()}
        for result in outcome.experiment_dir.glob("*/result.json")
    }


@pytest.mark.parametrize("reuse", [True, False])
def test_trials_run_one_after_another_in_one_worker_only_when_reuse_is_on(baseline_run, tmp_path, reuse):
    outcome = run_study(tiny_spec(tmp_path, "serial", "run.max_concurrent=1", f"run.reuse_workers={str(reuse).lower()}"))
    pids = _trial_pids(outcome)
    assert sorted(pids) == ["small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1"]
    assert all(len(p) == 1 for p in pids.values())
    assert (len(set.union(*pids.values())) == 1) == reuse
    # A reused worker carries nothing from one trial to the next: the numbers are those of fresh processes.
    key = ["arm_id", "epoch"]
    fresh, _ = read_tables(baseline_run)
    serial, _ = read_tables(outcome)
    pd.testing.assert_frame_equal(
        fresh.sort_values(key)[key + METRICS].reset_index(drop=True),
        serial.sort_values(key)[key + METRICS].reset_index(drop=True),
    )


def test_failed_trial_resumes_from_checkpoint_with_identical_metrics(baseline_run, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAIL_ONCE_ENV, "1")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(markers))
    retried = run_study(tiny_spec(tmp_path, "retried"))
    assert sorted(p.name for p in markers.iterdir()) == ["small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1"]
    assert retried.statuses["small_cnn_random_baseline_s0"] == "completed"
    # Each arm failed after epoch 1 and its retry resumed at epoch 2 from the checkpoint.
    assert read_tables(retried)[1].dropna(subset=["test_acc"])["resumed_at_epochs"].tolist() == [2, 2]
    assert read_tables(baseline_run)[1].dropna(subset=["test_acc"])["resumed_at_epochs"].isna().all()
    first, first_trials = read_tables(baseline_run)
    second, second_trials = read_tables(retried)
    key = ["arm_id", "epoch"]
    assert len(second) == len(first)  # the replayed epoch is not duplicated
    pd.testing.assert_frame_equal(
        first.sort_values(key)[key + METRICS].reset_index(drop=True),
        second.sort_values(key)[key + METRICS].reset_index(drop=True),
    )
    cols = ["arm_id", "test_acc", "test_macro_f1"]
    pd.testing.assert_frame_equal(
        first_trials.dropna(subset=["test_acc"]).sort_values("arm_id")[cols].reset_index(drop=True),
        second_trials.dropna(subset=["test_acc"]).sort_values("arm_id")[cols].reset_index(drop=True),
    )


def test_trial_failing_without_retries_is_reported_as_failed_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ONCE_ENV, "1")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(tmp_path / "markers"))
    outcome = run_study(tiny_spec(tmp_path, "failing", "grid.seed=[0]", "run.max_failures=0"))
    assert outcome.statuses == {"small_cnn_random_baseline_s0": "failed", "small_cnn_pretrained_baseline_s0": "unavailable"}
    epochs, trials = read_tables(outcome)
    failed = trials.set_index("arm_id").loc["small_cnn_random_baseline_s0"]
    assert "RuntimeError: injected test failure after epoch 1" in failed["error"]
    assert failed["epochs_done"] == 1 and epochs["epoch"].tolist() == [0, 1]  # what ran is kept
    report = (outcome.report_dir / "report.md").read_text()
    assert "**failed**: RuntimeError: injected test failure" in report


def test_report_command_rerenders_from_disk(baseline_run, capsys):
    from ferbench.harness.cli.main import main

    report_dir = baseline_run.report_dir
    before = (report_dir / "tables" / "epochs.csv").read_text()
    for path in sorted(report_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main(["report", str(baseline_run.experiment_dir)]) == 0
    assert str(report_dir / "report.md") in capsys.readouterr().out
    assert (report_dir / "tables" / "epochs.csv").read_text() == before
    assert (report_dir / "tables" / "trials.csv").is_file()


def test_report_command_rejects_a_folder_that_is_no_experiment(tmp_path, capsys):
    from ferbench.harness.cli.main import main

    assert main(["report", str(tmp_path)]) == 2
    assert "not a FERBench experiment" in capsys.readouterr().err


def test_pretrained_arm_loads_the_resolved_weight_file(tmp_path):
    import hashlib
    import json

    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(123)
    weights = tmp_path / "mnv1.safetensors"
    save_file(timm.create_model("mobilenetv1_100", num_classes=1000).state_dict(), str(weights))
    spec = tiny_spec(
        tmp_path, "pretrained", "grid.backbone=[mobilenet_v1]", "grid.init=[pretrained]", "grid.seed=[0]",
        "run.allow_unavailable=false", f"weights.files.mobilenet_v1={weights}", "train.lr=1e-4",
    )
    outcome = run_study(spec)
    assert outcome.statuses == {"mobilenet_v1_pretrained_baseline_s0": "completed"}
    manifest = json.loads((outcome.experiment_dir / "ferbench" / "manifest.json").read_text())
    recorded = manifest["weights"]["mobilenet_v1"]
    assert recorded["file"] == str(weights) and recorded["source"] == "weights.files"
    assert recorded["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # The trial's final checkpoint descends from those weights, not from a fresh random init.
    (checkpoint,) = sorted(outcome.experiment_dir.glob("mobilenet_v1_*/checkpoint_*"))[-1:]
    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(123)
    loaded = timm.create_model("mobilenetv1_100", num_classes=1000).state_dict()
    torch.manual_seed(0)
    fresh = timm.create_model("mobilenetv1_100", num_classes=7).state_dict()
    key = "conv_stem.weight"  # barely moves in two epochs at a small learning rate
    assert (state[key] - loaded[key]).abs().mean() < (state[key] - fresh[key]).abs().mean() / 10


def test_trials_report_the_trainable_parameters_of_their_freezing_policy(tmp_path):
    outcome = run_study(tiny_spec(tmp_path, "frozen", "grid.seed=[0]", "grid.init=[random]", "train.epochs=1",
                                  "train.freeze.policy=head_only", "train.head=arsirii_au"))
    _, trials = read_tables(outcome)
    row = trials.set_index("arm_id").loc["small_cnn_random_baseline_s0"]
    assert row["status"] == "completed"
    # arsirii_au on small_cnn's 128 feature maps: BatchNorm1d(128) + Linear(128, 7)
    assert row["params_trainable"] == 2 * 128 + 128 * 7 + 7 < row["params_total"]
    assert "head arsirii_au, freezing head_only" in (outcome.report_dir / "report.md").read_text()


def test_subject_kfold_study_runs_one_trial_per_fold_on_subject_exclusive_splits(tmp_path):
    outcome = run_study(tiny_spec(tmp_path, "kfold", "grid.seed=[0]", "grid.init=[random]", "train.epochs=1",
                                  "split.kind=subject_kfold", "split.k=3", "split.folds=[0,2]"))
    assert outcome.statuses == {"small_cnn_random_baseline_s0_f0": "completed", "small_cnn_random_baseline_s0_f2": "completed"}
    epochs, trials = read_tables(outcome)
    assert sorted(trials["fold"]) == [0, 2] and sorted(epochs["fold"].unique()) == [0, 2]
    folds = load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")
    assert set(folds) == {0, 2} and not np.array_equal(folds[0]["test"], folds[2]["test"])
    report = (outcome.report_dir / "report.md").read_text()
    assert "fold0 test" in report and "fold2 test" in report and "subject-exclusive 3-fold" in report


def test_report_tables_are_written_as_csv_and_parquet_and_match_the_curves(baseline_run):
    tables = baseline_run.report_dir / "tables"
    for name in ("epochs", "trials", "per_class", "mcr_mofr", "summary", "differences"):
        assert pd.read_parquet(tables / f"{name}.parquet").shape == pd.read_csv(tables / f"{name}.csv").shape, name
    epochs, trials = read_tables(baseline_run)
    mcr = pd.read_csv(tables / "mcr_mofr.csv")
    arm = "small_cnn_random_baseline_s1"
    curve = epochs[epochs.arm_id == arm].set_index("epoch")
    gap = curve["train_acc"] - curve["val_acc"]
    rows = mcr[(mcr.arm_id == arm) & (mcr.window == "1-2")].set_index(["metric", "kind"])["value"]
    assert rows["accuracy", "MCR"] == pytest.approx((curve.train_acc[2] - curve.train_acc[0]) / 2)
    assert rows["loss", "MCR"] == pytest.approx((curve.train_loss[2] - curve.train_loss[0]) / 2)
    assert rows["accuracy", "MOFR"] == pytest.approx((gap[2] - gap[0]) / 2)
    summary = pd.read_csv(tables / "summary.csv").set_index(["backbone", "init", "metric"])
    random_acc = trials[(trials.init == "random")]["test_acc"]
    assert summary.loc[("small_cnn", "random", "test_acc"), "mean"] == pytest.approx(random_acc.mean())
    assert summary.loc[("small_cnn", "random", "test_acc"), "n"] == 2
    report = (baseline_run.report_dir / "report.md").read_text()
    for heading in ("### Accuracy-based MCR", "### Loss-based MCR", "### Accuracy-based MOFR", "### Loss-based MOFR",
                    "## Across seeds", "## Per-class F1 on the test split"):
        assert heading in report
    over_seeds = mcr[(mcr.backbone == "small_cnn") & (mcr.init == "random") & (mcr.metric == "accuracy")
                     & (mcr.kind == "MCR") & (mcr.window == "1-2")]["value"].mean()
    assert f"| small_cnn_random | {over_seeds:.4f} |" in report


def test_every_figure_the_report_links_exists(baseline_run):
    import re

    from PIL import Image

    report = (baseline_run.report_dir / "report.md").read_text()
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report))
    assert {f"figures/{name}.png" for name in ("curves", "initial", "mcr_mofr", "accuracy_vs_params",
                                               "accuracy_vs_throughput", "class_counts", "confusion")} <= linked
    for link in linked:
        with Image.open(baseline_run.report_dir / link) as image:
            assert image.width > 400 and image.height > 200, link


def test_a_loss_that_becomes_nan_stops_the_trial_for_good_and_resume_leaves_it(tmp_path, capsys):
    """lr 1e30 with SGD: epoch 1 diverges. The arm is failed with the epoch and batch, the epoch before
    it stays, no retry repeats it (run.max_failures=2), and --resume does not train it again."""
    spec = tiny_spec(tmp_path, "diverges", "grid.seed=[0]", "grid.init=[random]", "train.optimizer=sgd", "train.lr=1e30",
                     "run.max_failures=2")
    outcome = run_study(spec)
    assert outcome.statuses == {"small_cnn_random_baseline_s0": "failed"}
    epochs, trials = read_tables(outcome)
    failed = trials.set_index("arm_id").loc["small_cnn_random_baseline_s0"]
    assert failed["error"].startswith("loss became ") and " at epoch 1, batch " in failed["error"], failed["error"]
    assert epochs["epoch"].tolist() == [0] and failed["resumed_at_epochs"] != failed["resumed_at_epochs"]  # no retry
    assert "retrying" not in capsys.readouterr().out
    resumed = run_study(spec, experiment_dir=outcome.experiment_dir, resume=True)
    assert resumed.statuses == outcome.statuses
    assert len(list(outcome.experiment_dir.glob("small_cnn_random_baseline_s0_*"))) == 1  # nothing started again
