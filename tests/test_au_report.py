"""The multi-label (action-unit) task's report part and the Data section's label statistics, on experiment
folders written by hand (no Ray, no training): per_au.csv's rows and values, the per-AU F1 table's means and
intervals, the threshold rule in words, the figures' data (F1 bars per loss, pooled PR curves) and the label
prevalence / co-occurrence counted by the experiment writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

from ferbench.harness.data.checks import inspect
from ferbench.harness.data.dataset import FER2013_CLASSES, FerDataset
from ferbench.harness.spec import StudySpec, load_spec
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.experiment import _label_summary, label_statistics
from ferbench.harness.study.layout import experiment_paths
from ferbench.reports import build_report
from ferbench.reports.au_figures import (
    MEAN, conditional_co_occurrence, draw_au_f1_bars, f1_bar_data, plot_label_statistics, pr_curve_data, prevalence_data,
)
from ferbench.reports.collect import collect, read_per_class, try_read
from ferbench.reports.context import ReportContext
from ferbench.reports.data_section import render_data_section
from ferbench.reports.tasks.multilabel import au_f1_table, collect_per_au, task_report, threshold_lines

LABELS = ["AU1", "AU2", "AU4"]
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
EPOCHS = 2
LOSS_GRID = ["grid.train.loss=[bce,lpr]"]


def _spec(seeds: str = "[0,1]", extra: list[str] = LOSS_GRID, threshold: str = "0.5") -> dict:
    return load_spec("quick", ["task=multilabel", "grid.backbone=[small_cnn]", "grid.init=[random]", f"grid.seed={seeds}",
                               "grid.variant=[baseline]", "grid.exclude=[]", f"train.epochs={EPOCHS}",
                               f"multilabel.threshold={threshold}", *extra]).model_dump(mode="json")


def _probabilities(number: int) -> np.ndarray:
    """Scores that follow the targets more or less closely, different per arm."""
    noise = np.random.default_rng(number).uniform(-0.45, 0.45, TARGETS.shape)
    return np.clip(0.3 + 0.4 * TARGETS + noise, 0.01, 0.99).astype(np.float32)


def _scores(probabilities: np.ndarray, thresholds: np.ndarray, rule: str) -> dict:
    """test_per_class.json as the contract has it, computed with scikit-learn."""
    precision, recall, f1, support = precision_recall_fscore_support(TARGETS, probabilities >= thresholds, zero_division=0)
    return {"class_names": LABELS, "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.tolist(), "threshold": thresholds.tolist(), "threshold_rule": rule,
            "average_precision": [average_precision_score(TARGETS[:, k], probabilities[:, k]) for k in range(len(LABELS))]}


def _rows(number: int) -> list[dict]:
    rows = [{"epoch": e, "train_acc": 0.6 + 0.1 * e, "val_acc": 0.6 + 0.05 * e, "train_loss": 0.7 - 0.1 * e,
             "val_loss": 0.7 - 0.05 * e, "lr": 1e-3, "epoch_time_s": float(e > 0), "train_images_per_s": 100.0,
             "params_total": 1000, "params_trainable": 1000, "input_size": 24} for e in range(EPOCHS + 1)]
    rows[-1].update(trial_finished=True, test_acc=0.7, test_macro_f1=0.5 + 0.01 * number, test_loss=0.6)
    return rows


def write_au_experiment(folder: Path, spec: dict, thresholds=lambda number: np.full(len(LABELS), 0.5, dtype=np.float32),
                        data_summary: dict | None = None) -> Path:
    """An experiment folder as a finished multi-label study leaves it: every arm tested on ``TARGETS``."""
    paths = experiment_paths(folder)
    arms = [{**arm, "status": "scheduled"} for arm in StudySpec.model_validate(spec).arms()]
    rule = "val_f1" if spec["multilabel"]["threshold"] == "val_f1" else "fixed"
    for number, arm in enumerate(arms):
        trial = folder / f"{arm['arm_id']}_00000_{number:05d}"
        atomic_write_json(trial / "params.json", {})
        (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in _rows(number)))
        probabilities, cut = _probabilities(number), np.asarray(thresholds(number), dtype=np.float32)
        np.savez(trial / "test_predictions.npz", indices=np.arange(len(TARGETS)), targets=TARGETS,
                 probabilities=probabilities, thresholds=cut)
        atomic_write_json(trial / "test_per_class.json", _scores(probabilities, cut, rule))
    manifest = {
        "study": "au", "experiment": folder.name, "created": "2026-01-01T00:00:00+00:00", "spec": spec,
        "versions": {"ferbench": "0.0"}, "git_commit": None, "hardware": {"processor": "x86_64", "cpu_count": 2},
        "dataset": {"name": "SynthFER", "images": 8, "image_size": [24, 24], "channels": 1, "class_names": ["unlabelled"],
                    "fingerprint_sha256": "0" * 64},
        "split_class_counts": {"test": {"unlabelled": 8}},
    }
    atomic_write_json(paths["manifest"], manifest | ({"data_summary": data_summary} if data_summary else {}))
    atomic_write_json(paths["grid"], arms)
    return folder


def _context(folder: Path) -> ReportContext:
    epochs, trials = collect(folder)
    spec = StudySpec.model_validate(json.loads(experiment_paths(folder)["manifest"].read_text())["spec"])
    return ReportContext(folder, folder / "report", spec, epochs, trials)


def _expected_f1(number: int, thresholds=0.5) -> np.ndarray:
    return precision_recall_fscore_support(TARGETS, _probabilities(number) >= thresholds, zero_division=0)[2]


# --------------------------------------------------------------------------- per_au.csv and the F1 table


def test_per_au_rows_carry_the_arm_its_loss_and_each_labels_scores(tmp_path):
    folder = write_au_experiment(tmp_path / "exp", _spec())
    per_au = collect_per_au(folder)
    assert list(per_au.columns) == ["arm_id", "backbone", "init", "variant", "seed", "train.loss", "au", "precision", "recall",
                                    "f1", "support", "threshold", "threshold_rule", "average_precision"]
    assert len(per_au) == 4 * len(LABELS)  # 2 losses × 2 seeds, one row per label
    row = per_au[(per_au["arm_id"] == "small_cnn_random_baseline_loss-lpr_s1") & (per_au["au"] == "AU2")].iloc[0]
    assert (row["train.loss"], row["seed"], row["threshold"], row["threshold_rule"]) == ("lpr", 1, 0.5, "fixed")
    assert row["f1"] == pytest.approx(_expected_f1(3)[1])  # the 4th arm in grid order
    assert row["support"] == TARGETS[:, 1].sum()
    assert row["average_precision"] == pytest.approx(average_precision_score(TARGETS[:, 1], _probabilities(3)[:, 1]))
    assert (collect(folder)[1]["damaged"] == "").all()  # the multi-label test_per_class.json reads as intact


def test_f1_table_means_over_seeds_and_average_f1_interval(tmp_path):
    per_au = collect_per_au(write_au_experiment(tmp_path / "exp", _spec()))
    table = au_f1_table(per_au).set_index("model")
    assert list(table.columns) == [*LABELS, "seeds", "average F1"]
    bce = "small_cnn_random_baseline_loss-bce"
    np.testing.assert_allclose(table.loc[bce, LABELS].to_numpy(dtype=float), (_expected_f1(0) + _expected_f1(1)) / 2)
    per_seed = np.array([_expected_f1(0).mean(), _expected_f1(1).mean()])
    half = stats.t.ppf(0.975, 1) * per_seed.std(ddof=1) / np.sqrt(2)
    mean = per_seed.mean()
    assert table.loc[bce, "seeds"] == 2
    assert table.loc[bce, "average F1"] == f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def test_one_seed_says_there_are_too_few_for_an_interval(tmp_path):
    per_au = collect_per_au(write_au_experiment(tmp_path / "exp", _spec(seeds="[0]", extra=[])))
    table = au_f1_table(per_au).set_index("model")
    assert table.index.tolist() == ["small_cnn_random_baseline"]
    assert table.loc["small_cnn_random_baseline", "average F1"] == \
        f"{_expected_f1(0).mean():.3f} (n = 1: too few seeds for an interval)"


def test_threshold_rule_in_words(tmp_path):
    fixed = collect_per_au(write_au_experiment(tmp_path / "fixed", _spec()))
    assert threshold_lines(fixed) == ["Decision thresholds (`multilabel.threshold`): fixed at 0.5 for every AU."]
    chosen = collect_per_au(write_au_experiment(tmp_path / "val", _spec(threshold="val_f1"),
                                                thresholds=lambda n: np.array([0.3, 0.4 + 0.1 * n, 0.6])))
    lines = threshold_lines(chosen)
    assert "chosen per AU on the validation split" in lines[0] and "applied unchanged to the test split" in lines[0]
    assert "| small_cnn_random_baseline_loss-bce | 0.300 | 0.450 | 0.600 |" in lines[-1]  # (0.4 + 0.5) / 2


# --------------------------------------------------------------------------- the section, its files, damaged trials


def test_task_report_writes_the_table_the_figures_and_names_the_rule(tmp_path):
    folder = write_au_experiment(tmp_path / "exp", _spec())
    markdown = task_report(_context(folder))
    report = folder / "report"
    table = pd.read_csv(report / "tables" / "per_au.csv")
    assert len(table) == 12 and set(table["au"]) == set(LABELS) and (report / "tables" / "per_au.parquet").is_file()
    for name in ("au_f1.png", "au_pr_curves.png"):
        with Image.open(report / "figures" / name) as image:
            assert image.width > 600 and image.height > 300
        assert f"(figures/{name})" in markdown
    assert markdown.startswith("## Per action unit on the test split")
    assert "fixed at 0.5 for every AU" in markdown
    assert "| model | AU1 | AU2 | AU4 | seeds | average F1 |" in markdown
    assert "seeds and folds pooled" in markdown


def test_a_damaged_score_file_is_named_and_its_arm_left_out(tmp_path):
    folder = write_au_experiment(tmp_path / "exp", _spec())
    broken = next(folder.glob("small_cnn_random_baseline_loss-bce_s1_*")) / "test_per_class.json"
    broken.write_text(broken.read_text()[:50])
    markdown = task_report(_context(folder))
    assert f"- `small_cnn_random_baseline_loss-bce_s1`: damaged: {broken.parent.name}/test_per_class.json" in markdown
    assert "small_cnn_random_baseline_loss-bce_s1" not in set(collect_per_au(folder)["arm_id"])


def test_multilabel_score_files_are_checked_like_the_others(tmp_path):
    good = _scores(_probabilities(0), np.full(3, 0.5), "fixed")
    path = tmp_path / "scores.json"
    for broken in ({**good, "threshold": [0.5]}, {k: v for k, v in good.items() if k != "average_precision"},
                   {**good, "threshold_rule": 1}):
        path.write_text(json.dumps(broken))
        assert try_read(path, read_per_class)[0] is None
    path.write_text(json.dumps({**good, "average_precision": [None, 0.5, 0.5]}))  # a label without positives
    assert try_read(path, read_per_class)[1] == ""


def test_the_whole_report_has_the_au_sections(tmp_path):
    dataset = _au_dataset()
    splits = {"train": np.arange(0, 6), "test": np.arange(6, 10)}
    summary = {**inspect(dataset, splits), "action_units": label_statistics(dataset.action_units, dataset.au_names, splits)}
    folder = write_au_experiment(tmp_path / "exp", _spec(), data_summary=summary)
    text = (build_report(folder) / "report.md").read_text()
    for heading in ("## Per action unit on the test split", "### Labels per image, per split", "## Data"):
        assert heading in text
    for name in ("au_f1.png", "au_pr_curves.png", "label_statistics.png"):
        assert (folder / "report" / "figures" / name).is_file()


# --------------------------------------------------------------------------- the figures' data


def test_f1_bars_group_by_loss_or_by_model(tmp_path):
    per_au = collect_per_au(write_au_experiment(tmp_path / "exp", _spec()))
    data = f1_bar_data(per_au).set_index(["panel", "bar", "au"])
    cell = data.loc[("small_cnn_random_baseline", "lpr", "AU4")]
    f1 = [_expected_f1(2)[2], _expected_f1(3)[2]]
    assert (cell["n"], cell["mean"], cell["low"], cell["high"]) == (2, pytest.approx(np.mean(f1)), min(f1), max(f1))
    assert data.loc[("small_cnn_random_baseline", "bce", MEAN), "mean"] == \
        pytest.approx(np.mean([_expected_f1(0).mean(), _expected_f1(1).mean()]))
    figure = draw_au_f1_bars(per_au)
    gids = {patch.get_gid() for ax in figure.axes for patch in ax.patches}
    assert {"small_cnn_random_baseline|bce|AU1", f"small_cnn_random_baseline|lpr|{MEAN}"} <= gids
    plain = f1_bar_data(per_au.drop(columns="train.loss"))
    assert set(plain["panel"]) == {""} and set(plain["bar"]) == {"small_cnn_random_baseline"}


def test_pr_curves_pool_a_models_seeds():
    thresholds = {"a_s0": np.array([0.5, 0.5, 0.5]), "a_s1": np.array([0.4, 0.6, 0.5])}
    predictions = {arm: {"probabilities": _probabilities(n), "targets": TARGETS, "thresholds": thresholds[arm]}
                   for n, arm in enumerate(thresholds)}
    curves = pr_curve_data(predictions, {"a_s0": "a", "a_s1": "a"}, LABELS)
    assert [(c.model, c.label) for c in curves] == [("a", label) for label in LABELS]
    scores, truth = np.concatenate([_probabilities(0), _probabilities(1)]), np.concatenate([TARGETS, TARGETS])
    precision, recall, _ = precision_recall_curve(truth[:, 1], scores[:, 1])
    np.testing.assert_allclose(curves[1].precision, precision)
    np.testing.assert_allclose(curves[1].recall, recall)
    assert curves[1].average_precision == pytest.approx(average_precision_score(truth[:, 1], scores[:, 1]))
    decided = np.concatenate([_probabilities(0)[:, 1] >= 0.5, _probabilities(1)[:, 1] >= 0.6])
    hits = (decided & truth[:, 1].astype(bool)).sum()
    assert curves[1].operating_point == (pytest.approx(hits / truth[:, 1].sum()), pytest.approx(hits / decided.sum()))
    assert curves[1].prevalence == pytest.approx(TARGETS[:, 1].mean())


# --------------------------------------------------------------------------- the Data section's label statistics


def _au_dataset() -> FerDataset:
    """10 images; AU1 on 0-4, AU2 on 3-6, AU4 on 4 and 9; images 7 and 8 have none."""
    units = np.zeros((10, 3), dtype=np.uint8)
    units[0:5, 0], units[3:7, 1], units[[4, 9], 2] = 1, 1, 1
    images = np.random.default_rng(0).integers(1, 255, (10, 12, 12), dtype=np.uint8)
    return FerDataset("aus", images, np.arange(10, dtype=np.int64) % 7, FER2013_CLASSES, action_units=units,
                      au_names=tuple(LABELS), meta={"format": "synthfer"})


def test_label_statistics_are_the_hand_counted_ones():
    dataset = _au_dataset()
    stats_ = label_statistics(dataset.action_units, dataset.au_names, {"train": np.arange(0, 6), "test": np.arange(6, 10)})
    assert stats_["names"] == LABELS
    assert stats_["images"] == {"all": 10, "train": 6, "test": 4}
    assert stats_["positives"] == {"all": [5, 4, 2], "train": [5, 3, 1], "test": [0, 1, 1]}
    assert stats_["no_label"] == {"all": 2, "train": 0, "test": 2}
    assert stats_["co_occurrence"] == [[5, 2, 1], [2, 4, 1], [1, 1, 2]]  # AU1&AU2: 3, 4; AU1&AU4, AU2&AU4: 4
    json.dumps(stats_)  # stored in the manifest
    np.testing.assert_allclose(prevalence_data(stats_).loc["AU2"].to_numpy(), [0.4, 0.5, 0.25])
    np.testing.assert_allclose(conditional_co_occurrence(stats_).loc["AU4"].to_numpy(), [0.5, 0.5, 1.0])


def test_only_a_multilabel_study_records_them():
    dataset = _au_dataset()
    classification = StudySpec.model_validate(load_spec("quick", []).model_dump(mode="json"))
    assert _label_summary(classification, dataset, {}) == {}
    multilabel = StudySpec.model_validate(_spec())
    assert set(_label_summary(multilabel, dataset, {})) == {"action_units"}


def test_data_section_shows_prevalence_and_co_occurrence(tmp_path):
    dataset = _au_dataset()
    splits = {"train": np.arange(0, 6), "test": np.arange(6, 10)}
    summary = inspect(dataset, splits)
    before = render_data_section(summary, tmp_path / "plain")
    assert "Labels per image" not in before and not (tmp_path / "plain" / "label_statistics.png").exists()
    summary["action_units"] = label_statistics(dataset.action_units, dataset.au_names, splits)
    markdown = render_data_section(summary, tmp_path / "figures")
    lines = markdown.splitlines()
    assert "### Labels per image, per split" in lines
    assert "| label | all | train | test |" in lines
    assert "| AU2 | 4 (40.0%) | 3 (50.0%) | 1 (25.0%) |" in lines
    assert "| no label active | 2 (20.0%) | 0 (0.0%) | 2 (50.0%) |" in lines
    assert "| images | 10 (100.0%) | 6 (100.0%) | 4 (100.0%) |" in lines
    assert "| label | AU1 | AU2 | AU4 |" in lines and "| AU1 | 5 | 2 | 1 |" in lines
    assert "![Label prevalence and co-occurrence](figures/label_statistics.png)" in lines
    assert markdown.replace(markdown[markdown.index("### Labels"):markdown.index("### Quality")], "") == before
    with Image.open(tmp_path / "figures" / "label_statistics.png") as image:
        assert image.width > 600 and image.height > 250


def test_label_figure_placeholder(tmp_path):
    path = plot_label_statistics({"names": [], "images": {"all": 0}, "positives": {"all": []}, "no_label": {"all": 0},
                                  "co_occurrence": []}, tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.width > 100


def test_folds_widen_the_interval_with_the_corrected_resampled_t(tmp_path):
    per_au = collect_per_au(write_au_experiment(tmp_path / "exp", _spec()))
    per_au = per_au.assign(fold=per_au["seed"] + 1, seed=0)  # the two seeds read as folds 1 and 2 of one seed
    table = au_f1_table(per_au, test_train_ratio=1.0).set_index("model")  # 2 folds: n_test / n_train = 1
    per_fold = np.array([_expected_f1(2).mean(), _expected_f1(3).mean()])
    mean, half = per_fold.mean(), stats.t.ppf(0.975, 1) * per_fold.std(ddof=1) * np.sqrt(1 / 2 + 1.0)
    assert table.loc["small_cnn_random_baseline_loss-lpr", "average F1"] == f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"
    single = au_f1_table(per_au[per_au["fold"] == 1]).set_index("model")
    assert single.loc["small_cnn_random_baseline_loss-lpr", "average F1"].endswith("(n = 1: too few seeds for an interval)")
