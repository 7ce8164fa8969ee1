"""The full comparison report from the session's reference experiment (conftest's ``reference_study``):
2 backbones × 2 inits × 2 seeds × 3 epochs on a local Ray, pretrained arms loading weight files written
there, plus pseudo-labelling arms on the random small_cnn. Every table and figure is present, and the
numbers the report states are the numbers in its CSVs. Also ``--compare`` (beside conftest's
``folds_study``) and a partial (interrupted) experiment (a copy of the reference missing a trial)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import REFERENCE_ARMS
from scipy import stats

from ferbench.harness.cli.main import main
from ferbench.reports.stats import welch_interval

TABLES = ("epochs", "trials", "per_class", "mcr_mofr", "summary", "differences", "sample_predictions")
FIGURES = ("curves", "initial", "mcr_mofr", "accuracy_vs_params", "accuracy_vs_throughput", "confusion", "class_counts",
           "sample_predictions")
MODELS = {f"{b}_{i}_baseline" for b in ("small_cnn", "mobilenet_v1") for i in ("pretrained", "random")} | {
    "small_cnn_random_pseudo_label"}


@pytest.fixture
def study(reference_study):
    return reference_study


def _tables(outcome) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(outcome.report_dir / "tables" / f"{name}.csv") for name in TABLES}


def _line(report: str, start: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(start))


def test_every_arm_completes_and_every_table_and_figure_is_written(study):
    assert study.statuses == {arm: "completed" for arm in REFERENCE_ARMS}
    tables = _tables(study)
    for name in TABLES:
        parquet = pd.read_parquet(study.report_dir / "tables" / f"{name}.parquet")
        assert parquet.shape == tables[name].shape and len(parquet) > 0, name
    report = (study.report_dir / "report.md").read_text()
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report))
    assert {f"figures/{name}.png" for name in FIGURES} <= linked
    for link in linked:
        assert (study.report_dir / link).stat().st_size > 5000, link
    for heading in ("### Accuracy-based MCR", "### Loss-based MCR", "### Accuracy-based MOFR", "### Loss-based MOFR",
                    "## Across seeds", "## Pretrained vs random", "## Per-class F1 on the test split",
                    "## Sample test images", "## Recommendation", "**Decision rule (Smelyakov et al.)**"):
        assert heading in report, heading
    assert "Partial results" not in report
    samples = tables["sample_predictions"]
    assert set(samples["model"]) == MODELS
    sums = samples.groupby(["sample", "model"])["probability"].sum()
    assert np.allclose(sums, 1.0, atol=1e-4)  # each model's mean softmax over the classes


def test_trials_carry_costs_measured_in_the_trial(study):
    trials = _tables(study)["trials"].set_index("arm_id")
    assert (trials["infer_latency_ms"] > 0).all() and (trials["infer_images_per_s"] > 0).all()
    assert (trials["infer_batch_size"] == 48).all()  # the whole test split (20% of 240) fits one eval batch
    assert (trials["wall_time_s"] > trials["train_time_s"]).all()  # training plus evaluation
    keras = trials.groupby("backbone")["backbone_keras_params"].unique().to_dict()
    assert keras["mobilenet_v1"].tolist() == [3_228_864] and keras["small_cnn"].tolist() == [113_984]


def test_report_numbers_are_the_csv_numbers(study):
    tables = _tables(study)
    report = (study.report_dir / "report.md").read_text()
    trials = tables["trials"]
    assert len(trials) == len(REFERENCE_ARMS)
    for row in trials.itertuples():
        assert re.search(rf"\| {row.arm_id} \| completed \|.*\| {row.test_acc:.3f} \| {row.test_macro_f1:.3f} \|", report)
    summary = tables["summary"].set_index(["backbone", "init", "variant", "metric"])
    # Across seeds: mean ± std [interval] of test accuracy per model
    for (backbone, init, variant), group in trials.groupby(["backbone", "init", "variant"]):
        row = summary.loc[(backbone, init, variant, "test_acc")]
        assert row["mean"] == pytest.approx(group["test_acc"].mean()) and row["n"] == 2
        cell = f"{row['mean']:.3f} ± {row['std']:.3f} [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
        assert cell in _line(report.split("## Across seeds", 1)[1], f"| {backbone}_{init}_{variant} |")
    # Pretrained vs random: the paired differences of the CSV, per backbone (baseline arms)
    differences = tables["differences"]
    compared = differences[(differences["metric"] == "test_acc") & (differences["comparison"] == "pretrained − random")]
    assert sorted(compared["backbone"]) == ["mobilenet_v1", "small_cnn"]
    pairs = trials[trials.variant == "baseline"].pivot(index="seed", columns=["backbone", "init"], values="test_acc")
    for row in compared.itertuples():
        expected = (pairs[(row.backbone, "pretrained")] - pairs[(row.backbone, "random")]).mean()
        assert row.mean_diff == pytest.approx(expected)
        assert f"{row.mean_diff:+.3f}" in report
    assert not differences["claim"].any()  # two seeds: nothing is claimed, and the report says why
    assert "too few seeds (n = 2): no claim" in report
    # Recommendation: the best test accuracy is the best mean in summary.csv
    means = summary.xs("test_acc", level="metric")["mean"]
    best = ["_".join(model) for model, mean in means.items() if mean == means.max()]  # ties: any of them
    assert any(f"`{model}` {means.max():.3f}" in _line(report, "- **Best test accuracy**") for model in best)
    latency = summary.xs("infer_latency_ms", level="metric")["mean"]
    assert f"`{'_'.join(latency.idxmin())}`" in _line(report, "- **Lowest inference latency**")


def test_welch_interval_agrees_with_scipy():
    a, b = np.array([0.61, 0.64, 0.60, 0.66]), np.array([0.70, 0.69, 0.75])
    low, high = welch_interval(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    expected = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert np.isnan(welch_interval(0.5, np.nan, 1, 0.6, 0.1, 3)[0])


@pytest.mark.e2e  # --compare over two whole experiments (its tables and intervals: tests/test_stats.py)
def test_compare_sets_two_experiments_side_by_side(study, folds_study, tmp_path, capsys):
    """The reference beside another experiment on the same data (conftest's ``folds_study``: the random
    small_cnn, head only, on two folds). ``--compare`` renders each experiment's report again: copies."""
    first_dir = shutil.copytree(study.experiment_dir, tmp_path / study.experiment_dir.name)
    other_dir = shutil.copytree(folds_study.experiment_dir, tmp_path / folds_study.experiment_dir.name)
    out = tmp_path / "cmp"
    assert main(["report", str(first_dir), str(other_dir), "--compare", "--out", str(out)]) == 0
    assert f"Comparison: {out / 'report.md'}" in capsys.readouterr().out
    table = pd.read_csv(out / "tables" / "comparison.csv")
    first = pd.read_csv(study.report_dir / "tables" / "trials.csv")
    second = pd.read_csv(folds_study.report_dir / "tables" / "trials.csv")
    a = first[(first.backbone == "small_cnn") & (first.init == "random") & (first.variant == "baseline")]["test_acc"].to_numpy()
    b = second["test_acc"].to_numpy()
    assert len(a) == len(b) == 2
    row = table[(table.experiment == other_dir.name) & (table.model == "small_cnn_random_baseline")
                & (table.metric == "test_acc")].iloc[0]
    assert row["diff_vs_first"] == pytest.approx(b.mean() - a.mean())
    if a.std() > 0 and b.std() > 0:
        expected = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        assert (row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx((expected.low, expected.high))
    # models only in the first experiment are shown as absent from the second
    report = (out / "report.md").read_text()
    assert "| mobilenet_v1_pretrained_baseline |" in report and "not in this experiment" in report
    assert f"Δ {row['diff_vs_first']:+.3f}" in report
    assert "different data" not in report  # same SynthFER arguments, same fingerprint
    assert "data:image" not in report and "Δ" in (out / "report.html").read_text()  # rendered as HTML too


def test_compare_needs_two_experiments(study, capsys):
    assert main(["report", str(study.experiment_dir), "--compare"]) == 2
    assert "--compare needs two or more" in capsys.readouterr().err


def test_interrupted_experiment_renders_as_partial(study, tmp_path, capsys):
    """A copy of the reference experiment (10 arms) without the trial of one of its arms."""
    copy = tmp_path / "interrupted"
    shutil.copytree(study.experiment_dir, copy, ignore=shutil.ignore_patterns("report"))
    for trial_dir in copy.glob("small_cnn_random_baseline_s1_*"):
        shutil.rmtree(trial_dir)  # as if that trial had not started when the study stopped
    assert main(["report", str(copy)]) == 0
    report = (copy / "report" / "report.md").read_text()
    assert "**Partial results**: 1 of 10 arms have not finished" in report
    assert "`small_cnn_random_baseline_s1` — **incomplete**" in report
    trials = pd.read_csv(copy / "report" / "tables" / "trials.csv")
    assert (trials["status"] == "completed").sum() == 9
    summary = pd.read_csv(copy / "report" / "tables" / "summary.csv").set_index(["backbone", "init", "variant", "metric"])
    assert summary.loc[("small_cnn", "random", "baseline", "test_acc"), "n"] == 1
