"""End-to-end studies on the session's local Ray: report files, determinism, retry from checkpoint.

Most checks read the session's reference experiment (conftest's ``reference_study``; the freezing and
k-fold checks conftest's ``folds_study``); the studies run here re-run its random small_cnn arms
(``helpers.SMALL``: one after another in fresh workers, with injected failures, without retries, diverging),
which must give its numbers again where nothing went wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import REFERENCE_ARMS, SMALL

from ferbench.harness.study.engine import run_study
from ferbench.harness.spec import load_spec
from ferbench.harness.data.splits import load_splits
from ferbench.reports.collect import collect_per_class
from ferbench.harness.train.trial import FAIL_MARKER_ENV, FAIL_ONCE_ENV

METRICS = ["train_acc", "train_loss", "val_acc", "val_loss"]
SMALL_ARMS = ["small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1"]


def tiny_spec(storage, name: str, *extra: str):
    return load_spec("quick", [*SMALL, f"run.storage={storage}", f"run.name={name}", *extra])


def read_tables(outcome):
    tables = outcome.report_dir / "tables"
    return pd.read_csv(tables / "epochs.csv"), pd.read_csv(tables / "trials.csv")


def small_arms(outcome):
    """The reference's (or a re-run's) epochs and trials of the random small_cnn baseline arms only."""
    epochs, trials = read_tables(outcome)
    return epochs[epochs.arm_id.isin(SMALL_ARMS)], trials[trials.arm_id.isin(SMALL_ARMS)]


@pytest.fixture(scope="module")
def serial_fresh(tmp_path_factory):
    """The random small_cnn arms again, one after another, each in a fresh worker process."""
    storage = tmp_path_factory.mktemp("serial-fresh")
    return run_study(tiny_spec(storage, "serial", "run.max_concurrent=1", "run.reuse_workers=false"))


def test_study_writes_report_with_every_arm(reference_study):
    epochs, trials = read_tables(reference_study)
    assert reference_study.statuses == {arm: "completed" for arm in REFERENCE_ARMS}
    # One row per trial × epoch, epoch 0 (before training) included.
    baseline = epochs[epochs.variant == "baseline"]
    assert sorted(baseline.groupby("arm_id")["epoch"].apply(list).tolist()) == [[0, 1, 2, 3]] * 8
    expected = {"trial_id", "backbone", "init", "variant", "seed", "epoch", "train_acc", "train_loss",
                "val_acc", "val_loss", "lr", "epoch_time_s", "train_images_per_s"}
    assert expected <= set(epochs.columns)
    assert epochs[METRICS].notna().all().all()
    assert (epochs.loc[epochs.epoch > 0, "train_images_per_s"] > 0).all()
    completed = trials[trials.status == "completed"]
    assert len(completed) == len(REFERENCE_ARMS)
    assert completed[["test_acc", "test_macro_f1", "final_val_acc"]].notna().all().all()
    report = (reference_study.report_dir / "report.md").read_text()
    for arm in reference_study.statuses:
        assert arm in report
    assert "## Data" in report and "### Images per class, per split" in report
    assert (reference_study.report_dir / "figures" / "class_counts.png").stat().st_size > 1000


def test_per_class_results_agree_with_the_trials_macro_f1(reference_study):
    _, trials = read_tables(reference_study)
    per_class = pd.read_csv(reference_study.report_dir / "tables" / "per_class.csv")
    completed = trials[trials.status == "completed"].set_index("arm_id")
    assert set(per_class["arm_id"]) == set(completed.index)
    _, confusion = collect_per_class(reference_study.experiment_dir)
    for arm_id, rows in per_class.groupby("arm_id"):
        assert len(rows) == 7 and rows["f1"].between(0, 1).all()
        matrix = np.array(confusion[arm_id]["matrix"])
        assert matrix.sum(axis=1).tolist() == rows["support"].tolist()
        assert np.trace(matrix) / matrix.sum() == pytest.approx(completed.loc[arm_id, "test_acc"], abs=1e-6)
        seen = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0  # torchmetrics' macro F1 skips classes never seen
        assert rows["f1"][seen].mean() == pytest.approx(completed.loc[arm_id, "test_macro_f1"], abs=1e-6)
        assert rows["support"].sum() == 48  # the test part: 20% of 240 images
    for trial_dir in reference_study.experiment_dir.glob("small_cnn_random_*"):
        assert (trial_dir / "test_predictions.npz").is_file()


def test_same_seed_gives_identical_epochs(reference_study, serial_fresh):
    """The reference's arms (run side by side, workers reused, in a grid of 10 arms) and the same arms run
    again alone, one after another: the same numbers."""
    first, _ = small_arms(reference_study)
    second, _ = read_tables(serial_fresh)
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
def test_trials_run_one_after_another_in_one_worker_only_when_reuse_is_on(reference_study, serial_fresh, reuse):
    """With reuse on (the reference: 10 trials, 2 at a time) the trials run one after another in as many
    workers as run at once; with it off (the re-run: 2 trials, 1 at a time) each trial has its own."""
    outcome = reference_study if reuse else serial_fresh
    pids = _trial_pids(outcome)
    assert sorted(pids) == sorted(REFERENCE_ARMS if reuse else SMALL_ARMS)
    assert all(len(p) == 1 for p in pids.values())
    workers = set.union(*pids.values())
    assert len(workers) <= 2 if reuse else len(workers) == len(pids) == 2
    # A reused worker carries nothing from one trial to the next: the numbers are those of fresh processes.
    key = ["arm_id", "epoch"]
    reused, _ = small_arms(reference_study)
    fresh, _ = read_tables(serial_fresh)
    pd.testing.assert_frame_equal(
        fresh.sort_values(key)[key + METRICS].reset_index(drop=True),
        reused.sort_values(key)[key + METRICS].reset_index(drop=True),
    )


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """The random small_cnn arms again: s0 fails once, right after its epoch-0 checkpoint (a marker file
    lets its retry run through), s1 fails there on every attempt (``run.max_failures=1``: 2 attempts, the
    second one epoch further). Returns the outcome and the markers' folder."""
    from ferbench.harness.train.trial import FAIL_ALWAYS_ENV

    storage = tmp_path_factory.mktemp("faulty")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAIL_ONCE_ENV, "0")
        patch.setenv(FAIL_MARKER_ENV, str(storage / "markers"))
        patch.setenv(FAIL_ALWAYS_ENV, "small_cnn_random_baseline_s1")
        outcome = run_study(tiny_spec(storage, "faulty", "run.max_failures=1"))
    return outcome, storage / "markers"


def test_failed_trial_resumes_from_checkpoint_with_identical_metrics(reference_study, faulty):
    retried, markers = faulty
    arm = "small_cnn_random_baseline_s0"
    assert [p.name for p in markers.iterdir()] == [arm]  # s1 fails for good before its once-marker is made
    assert retried.statuses[arm] == "completed"
    # The arm failed after epoch 0 and its retry resumed at epoch 1 from the checkpoint.
    epochs, trials = read_tables(retried)
    assert str(trials.set_index("arm_id").loc[arm, "resumed_at_epochs"]) == "1"
    first, first_trials = small_arms(reference_study)
    assert first_trials.dropna(subset=["test_acc"])["resumed_at_epochs"].isna().all()
    first, first_trials = first[first.arm_id == arm], first_trials[first_trials.arm_id == arm]
    second, second_trials = epochs[epochs.arm_id == arm], trials[trials.arm_id == arm]
    key = ["arm_id", "epoch"]
    assert len(second) == len(first)  # the replayed epoch is not duplicated
    pd.testing.assert_frame_equal(
        first.sort_values(key)[key + METRICS].reset_index(drop=True),
        second.sort_values(key)[key + METRICS].reset_index(drop=True),
    )
    cols = ["arm_id", "test_acc", "test_macro_f1"]
    pd.testing.assert_frame_equal(first_trials[cols].reset_index(drop=True), second_trials[cols].reset_index(drop=True))


def test_trial_failing_on_every_retry_is_failed_and_the_others_unaffected(reference_study, faulty):
    outcome, _ = faulty
    assert outcome.statuses == {"small_cnn_random_baseline_s0": "completed", "small_cnn_random_baseline_s1": "failed"}
    epochs, trials = read_tables(outcome)
    failed = trials.set_index("arm_id").loc["small_cnn_random_baseline_s1"]
    # each of its 2 attempts (run.max_failures=1) got one epoch further before failing
    assert "injected permanent test failure after epoch 1" in failed["error"]
    assert failed["epochs_done"] == 1  # what ran before the failure is kept, once
    assert not epochs.duplicated(["arm_id", "epoch"]).any()
    report = (outcome.report_dir / "report.md").read_text()
    assert "`small_cnn_random_baseline_s1` — **failed**: RuntimeError: injected permanent test failure" in report
    # The other arm failed once too, resumed, and ends as if nothing had happened.
    key = ["arm_id", "epoch"]
    done = epochs[epochs["arm_id"] == "small_cnn_random_baseline_s0"]
    reference, _ = small_arms(reference_study)
    reference = reference[reference["arm_id"] == "small_cnn_random_baseline_s0"]
    pd.testing.assert_frame_equal(done.sort_values(key)[key + METRICS].reset_index(drop=True),
                                  reference.sort_values(key)[key + METRICS].reset_index(drop=True))


@pytest.mark.e2e  # a study of its own (10-13 s); the default suite checks failures and retries with `faulty`
def test_trial_failing_without_retries_is_reported_as_failed_with_its_error(tmp_path, monkeypatch):
    """Also an arm whose weights cannot be found, with ``run.allow_unavailable``: listed as unavailable."""
    monkeypatch.setenv(FAIL_ONCE_ENV, "1")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(tmp_path / "markers"))
    outcome = run_study(tiny_spec(tmp_path, "failing", "grid.seed=[0]", "grid.init=[random,pretrained]",
                                  "run.allow_unavailable=true", "run.max_failures=0"))
    assert outcome.statuses == {"small_cnn_random_baseline_s0": "failed", "small_cnn_pretrained_baseline_s0": "unavailable"}
    epochs, trials = read_tables(outcome)
    failed = trials.set_index("arm_id").loc["small_cnn_random_baseline_s0"]
    assert "RuntimeError: injected test failure after epoch 1" in failed["error"]
    assert failed["epochs_done"] == 1 and epochs["epoch"].tolist() == [0, 1]  # what ran is kept
    assert trials.loc[trials.status == "unavailable", "error"].str.contains("weights.files.small_cnn").all()
    report = (outcome.report_dir / "report.md").read_text()
    assert "**failed**: RuntimeError: injected test failure" in report
    for arm in outcome.statuses:
        assert arm in report
    assert "unavailable" in report


def test_report_command_rerenders_from_disk(serial_fresh, tmp_path, capsys):
    from ferbench.harness.cli.main import main

    before = (serial_fresh.report_dir / "tables" / "epochs.csv").read_text()
    experiment = shutil.copytree(serial_fresh.experiment_dir, tmp_path / "copy")
    report_dir = experiment / "report"
    for path in sorted(report_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main(["report", str(experiment)]) == 0
    assert str(report_dir / "report.md") in capsys.readouterr().out
    assert (report_dir / "tables" / "epochs.csv").read_text() == before
    assert (report_dir / "tables" / "trials.csv").is_file()


def test_report_command_rejects_a_folder_that_is_no_experiment(tmp_path, capsys):
    from ferbench.harness.cli.main import main

    assert main(["report", str(tmp_path)]) == 2
    assert "not a FERBench experiment" in capsys.readouterr().err


def test_pretrained_arm_loads_the_resolved_weight_file(reference_study):
    """The reference's MobileNet V1 arms start from timm's ImageNet-shaped file (helpers.reference_weight_files)."""
    import hashlib

    import timm
    import torch

    experiment = reference_study.experiment_dir
    weights = experiment.parent / "mnv1.safetensors"
    manifest = json.loads((experiment / "ferbench" / "manifest.json").read_text())
    recorded = manifest["weights"]["mobilenet_v1"]
    assert recorded["file"] == str(weights) and recorded["source"] == "weights.files"
    assert recorded["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # The trial's final checkpoint descends from those weights, not from a fresh random init.
    (checkpoint,) = sorted(experiment.glob("mobilenet_v1_pretrained_baseline_s0_*/checkpoint_*"))[-1:]
    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(123)
    loaded = timm.create_model("mobilenetv1_100", num_classes=1000).state_dict()
    torch.manual_seed(0)
    fresh = timm.create_model("mobilenetv1_100", num_classes=7).state_dict()
    key = "conv_stem.weight"  # barely moves in three epochs at a small learning rate (train.lr=1e-4)
    assert (state[key] - loaded[key]).abs().mean() < (state[key] - fresh[key]).abs().mean() / 10


def test_trials_report_the_trainable_parameters_of_their_freezing_policy(folds_study):
    _, trials = read_tables(folds_study)
    for fold in (0, 2):
        row = trials.set_index("arm_id").loc[f"small_cnn_random_baseline_s0_f{fold}"]
        assert row["status"] == "completed"
        # arsirii_au on small_cnn's 128 feature maps: BatchNorm1d(128) + Linear(128, 7)
        assert row["params_trainable"] == 2 * 128 + 128 * 7 + 7 < row["params_total"]
    assert "head arsirii_au, freezing head_only" in (folds_study.report_dir / "report.md").read_text()


def test_subject_kfold_study_runs_one_trial_per_fold_on_subject_exclusive_splits(folds_study):
    outcome = folds_study
    assert outcome.statuses == {"small_cnn_random_baseline_s0_f0": "completed", "small_cnn_random_baseline_s0_f2": "completed"}
    epochs, trials = read_tables(outcome)
    assert sorted(trials["fold"]) == [0, 2] and sorted(epochs["fold"].unique()) == [0, 2]
    folds = load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")
    assert set(folds) == {0, 2} and not np.array_equal(folds[0]["test"], folds[2]["test"])
    report = (outcome.report_dir / "report.md").read_text()
    assert "fold0 test" in report and "fold2 test" in report and "subject-exclusive 3-fold" in report


def test_report_tables_are_written_as_csv_and_parquet_and_match_the_curves(reference_study):
    tables = reference_study.report_dir / "tables"
    for name in ("epochs", "trials", "per_class", "mcr_mofr", "summary", "differences"):
        assert pd.read_parquet(tables / f"{name}.parquet").shape == pd.read_csv(tables / f"{name}.csv").shape, name
    epochs, trials = read_tables(reference_study)
    mcr = pd.read_csv(tables / "mcr_mofr.csv")
    arm = "small_cnn_random_baseline_s1"
    curve = epochs[epochs.arm_id == arm].set_index("epoch")
    gap = curve["train_acc"] - curve["val_acc"]
    rows = mcr[(mcr.arm_id == arm) & (mcr.window == "1-3")].set_index(["metric", "kind"])["value"]
    assert rows["accuracy", "MCR"] == pytest.approx((curve.train_acc[3] - curve.train_acc[0]) / 3)
    assert rows["loss", "MCR"] == pytest.approx((curve.train_loss[3] - curve.train_loss[0]) / 3)
    assert rows["accuracy", "MOFR"] == pytest.approx((gap[3] - gap[0]) / 3)
    summary = pd.read_csv(tables / "summary.csv").set_index(["backbone", "init", "variant", "metric"])
    random_acc = trials[(trials.backbone == "small_cnn") & (trials.init == "random") & (trials.variant == "baseline")]["test_acc"]
    assert summary.loc[("small_cnn", "random", "baseline", "test_acc"), "mean"] == pytest.approx(random_acc.mean())
    assert summary.loc[("small_cnn", "random", "baseline", "test_acc"), "n"] == 2
    report = (reference_study.report_dir / "report.md").read_text()
    for heading in ("### Accuracy-based MCR", "### Loss-based MCR", "### Accuracy-based MOFR", "### Loss-based MOFR",
                    "## Across seeds", "## Per-class F1 on the test split"):
        assert heading in report
    over_seeds = mcr[(mcr.backbone == "small_cnn") & (mcr.init == "random") & (mcr.variant == "baseline")
                     & (mcr.metric == "accuracy") & (mcr.kind == "MCR") & (mcr.window == "1-3")]["value"].mean()
    assert f"| small_cnn_random_baseline | {over_seeds:.4f} |" in report


def test_every_figure_the_report_links_exists(reference_study):
    import re

    from PIL import Image

    report = (reference_study.report_dir / "report.md").read_text()
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report))
    assert {f"figures/{name}.png" for name in ("curves", "initial", "mcr_mofr", "accuracy_vs_params",
                                               "accuracy_vs_throughput", "class_counts", "confusion")} <= linked
    for link in linked:
        with Image.open(reference_study.report_dir / link) as image:
            assert image.width > 400 and image.height > 200, link


@pytest.mark.e2e  # two studies of its own (a run and its --resume, 9-13 s)
def test_a_loss_that_becomes_nan_stops_the_trial_for_good_and_resume_leaves_it(tmp_path, capsys):
    """lr 1e30 with SGD: epoch 1 diverges. The arm is failed with the epoch and batch, the epoch before
    it stays, no retry repeats it (run.max_failures=2), and --resume does not train it again."""
    spec = tiny_spec(tmp_path, "diverges", "grid.seed=[0]", "train.optimizer=sgd", "train.lr=1e30",
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
