"""The multi-label (action-unit) task's part of the report, after Arsirii et al. (2023): per arm and
label the test precision, recall, F1, support, decision threshold and average precision
(``tables/per_au.csv``); the per-AU F1 table with the average F1 over labels (the paper's headline)
and its interval across seeds; the threshold rule the scores rest on; per-AU F1 bars per loss (the
paper's Fig. 4 comparison) and precision–recall curves per AU.

Why the threshold rule is stated: F1, precision and recall change with the threshold, and a
threshold tuned on validation moves them, so two studies' F1 compare only under the same rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferbench.harness.study.layout import TEST_PER_CLASS_FILE, TEST_PREDICTIONS_FILE
from ferbench.reports.au_figures import LOSS_AXIS, plot_au_f1_bars, plot_pr_curves
from ferbench.reports.collect import arm_artifacts, read_per_class, read_predictions
from ferbench.reports.comparison import write_table
from ferbench.reports.context import ReportContext
from ferbench.reports.derived import fold_test_train_ratio, model_names, seed_summary
from ferbench.reports.figures import _unit_word
from ferbench.reports.escaping import md_code
from ferbench.reports.markdown import damaged_arms, damaged_lines, markdown_table

LABEL_SCORES = ("precision", "recall", "f1", "support", "threshold")
PER_AU_COLUMNS = ["au", *LABEL_SCORES, "threshold_rule", "average_precision"]
FIXED, VAL_F1 = "fixed", "val_f1"  # the ``threshold_rule`` values of the task's test_per_class.json
AVERAGE_F1 = "average F1"
F1_FIGURE, PR_FIGURE = "au_f1.png", "au_pr_curves.png"


# --------------------------------------------------------------------------- reading the trials


def collect_per_au(experiment_dir: Path) -> pd.DataFrame:
    """One row per arm × label of the test split: the arm's descriptor columns (as ``tables/per_class.csv``
    has them, with the extra grid axes such as ``train.loss``), ``au`` and the label's scores from the
    trial's ``test_per_class.json``. A file not written yet or damaged leaves its arm out."""
    columns, found = arm_artifacts(experiment_dir, TEST_PER_CLASS_FILE, read_per_class)
    rows = [{**fields, "au": name, **{key: scores[key][i] for key in LABEL_SCORES},
             "threshold_rule": scores["threshold_rule"], "average_precision": scores["average_precision"][i]}
            for fields, scores in found if "threshold_rule" in scores for i, name in enumerate(scores["class_names"])]
    frame = pd.DataFrame(rows, columns=columns + PER_AU_COLUMNS)
    return frame.assign(average_precision=pd.to_numeric(frame["average_precision"], errors="coerce"))


def read_label_predictions(path: Path) -> dict[str, np.ndarray]:
    """A multi-label trial's ``test_predictions.npz``: ``probabilities`` and 0/1 ``targets`` (images × labels)
    and the ``thresholds`` (one per label) the test scores used, checked to agree; never unpickled."""
    arrays = read_predictions(path)
    with np.load(path, allow_pickle=False) as stored:
        arrays.update({name: stored[name] for name in ("targets", "thresholds")})
    shape = arrays["probabilities"].shape
    if arrays["targets"].shape != shape or arrays["thresholds"].shape != shape[1:]:
        raise ValueError("probabilities, targets and thresholds do not match")
    return arrays


def collect_label_predictions(experiment_dir: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """(arm_id → its test predictions, arm_id → its model name) of every arm with readable predictions."""
    _, found = arm_artifacts(experiment_dir, TEST_PREDICTIONS_FILE, read_label_predictions)
    if not found:
        return {}, {}
    arms = pd.DataFrame([fields for fields, _ in found])
    return ({fields["arm_id"]: arrays for fields, arrays in found},
            dict(zip(arms["arm_id"], model_names(arms))))


# --------------------------------------------------------------------------- tables


def average_f1(per_au: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: its descriptor columns and ``average_f1``, the mean of its labels' test F1 (the
    paper's "average F1", the trials' ``test_macro_f1``)."""
    descriptors = [c for c in per_au.columns if c not in PER_AU_COLUMNS]
    means = per_au.assign(f1=pd.to_numeric(per_au["f1"], errors="coerce")).groupby("arm_id", sort=False)["f1"].mean()
    return per_au.drop_duplicates("arm_id")[descriptors].merge(means.rename("average_f1"), left_on="arm_id", right_index=True)


def _interval_cell(mean: float, low: float, high: float, n: int, unit: str) -> str:
    if n == 0 or pd.isna(mean):
        return "–"
    if n < 2 or pd.isna(low):
        return f"{mean:.3f} (n = {n}: too few {unit} for an interval)"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def au_f1_table(per_au: pd.DataFrame, test_train_ratio: float | None = None) -> pd.DataFrame:
    """Models × labels: test F1, mean over seeds (and folds); then ``seeds`` (arms counted) and ``average F1``
    with its 95% interval across them (``seed_summary``: Student t, corrected resampled over folds)."""
    frame = per_au.assign(model=model_names(per_au), f1=pd.to_numeric(per_au["f1"], errors="coerce"))
    labels = list(dict.fromkeys(frame["au"]))
    table = frame.pivot_table(index="model", columns="au", values="f1", aggfunc="mean", sort=False, dropna=False)[labels]
    summary = seed_summary(average_f1(per_au), ["average_f1"], test_train_ratio)
    summary.index = model_names(summary)
    unit = _unit_word(per_au)
    table["seeds"] = summary["n"]
    table[AVERAGE_F1] = [_interval_cell(row.mean, row.ci95_low, row.ci95_high, int(row.n), unit)
                         for row in summary.reindex(table.index).itertuples()]
    return table.rename_axis(index="model", columns=None).reset_index()


def threshold_lines(per_au: pd.DataFrame) -> list[str]:
    """The rule the test decisions used, in words: one sentence, or one line per rule with its models when a
    grid axis gives models different rules; with thresholds chosen on validation, their table (mean over seeds)."""
    frame = per_au.assign(model=model_names(per_au))
    fixed = frame["threshold_rule"] == FIXED
    frame["rule"] = np.where(fixed, "fixed at " + frame["threshold"].map("{:g}".format) + " for every AU",
                             "chosen per AU on the validation split (the threshold maximising that AU's F1 on the "
                             "tested model's validation predictions) and applied unchanged to the test split")
    rules = frame.drop_duplicates(["model", "rule"]).groupby("rule", sort=False)["model"].agg(list)
    if len(rules) == 1:
        lines = [f"Decision thresholds (`multilabel.threshold`): {rules.index[0]}."]
    else:
        lines = ["Decision thresholds (`multilabel.threshold`) differ between models:",
                 *(f"- {rule}: {', '.join(md_code(model) for model in models)}" for rule, models in rules.items())]
    chosen = frame[~fixed]
    if not chosen.empty:
        table = chosen.pivot_table(index="model", columns="au", values="threshold", aggfunc="mean", sort=False)
        lines += ["", "Thresholds chosen on validation, mean over seeds:", "",
                  markdown_table(table[list(dict.fromkeys(chosen["au"]))].rename_axis(columns=None).reset_index())]
    return lines


# --------------------------------------------------------------------------- the section


def task_report(context: ReportContext) -> str:
    """Write ``tables/per_au.csv`` (and .parquet), ``figures/au_f1.png`` and ``figures/au_pr_curves.png``; the
    Markdown lines that end the comparison section ("" when no arm has test results or a damaged file)."""
    per_au = collect_per_au(context.experiment_dir)
    predictions, models = collect_label_predictions(context.experiment_dir)
    labels = list(dict.fromkeys(per_au["au"]))
    figures = context.report_dir / "figures"
    write_table(context.report_dir / "tables", "per_au", per_au)
    plot_au_f1_bars(per_au, figures / F1_FIGURE)
    plot_pr_curves(predictions, models, labels, figures / PR_FIGURE)
    damaged = damaged_lines(damaged_arms(context.trials, TEST_PER_CLASS_FILE))
    damaged_predictions = damaged_lines(damaged_arms(context.trials, TEST_PREDICTIONS_FILE))
    if per_au.empty and not predictions and not damaged + damaged_predictions:
        return ""
    unit = _unit_word(per_au)
    lines = ["## Per action unit on the test split", "",
             f"Test F1 per label, mean over {unit}; precision, recall, support, threshold and average precision of "
             "every arm are in `tables/per_au.csv`. Average F1: each arm's mean F1 over the labels (the trials' "
             f"`test_macro_f1`, Arsirii et al.'s headline), mean over {unit} with its 95% Student-t interval "
             "(over folds the corrected resampled one); an interval needs at least 2 of them.", ""]
    if not per_au.empty:
        ratio = fold_test_train_ratio(context.spec.split)
        lines += [markdown_table(au_f1_table(per_au, ratio), formatted=[AVERAGE_F1]), *threshold_lines(per_au), ""]
    lines += [*damaged, *([""] if damaged else [])]
    figure_text = "per loss (one panel per model, a bar per loss)" if LOSS_AXIS in per_au.columns else "per model"
    lines += [f"Test F1 per AU {figure_text}, as Arsirii et al. compare losses in their Fig. 4; error bars min–max "
              f"across {unit}:", "",
              f"![Test F1 per action unit and loss](figures/{F1_FIGURE})", "",
              "Precision–recall curves per AU, one line per model, each model's seeds and folds pooled (their test "
              "predictions stacked); the dot is the operating point at the arms' own thresholds, the dashed line the "
              "AU's prevalence (what guessing at random reaches); AP: average precision of the pooled predictions.", "",
              f"![Precision-recall curves per action unit](figures/{PR_FIGURE})", "",
              *damaged_predictions, *([""] if damaged_predictions else [])]
    return "\n".join(lines)
