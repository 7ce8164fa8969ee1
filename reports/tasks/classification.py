"""Single-label classification's part of the report: per-class precision / recall / F1 / support on
the test split (``tables/per_class.csv``), the normalised confusion matrices and the per-class F1 table."""

from __future__ import annotations

import pandas as pd

from ferbench.harness.study.layout import TEST_PER_CLASS_FILE
from ferbench.reports.collect import collect_per_class
from ferbench.reports.comparison import write_table
from ferbench.reports.confusion import plot_confusion_matrices
from ferbench.reports.context import ReportContext
from ferbench.reports.derived import model_names
from ferbench.reports.markdown import damaged_arms, damaged_lines, markdown_table


def _per_class_table(per_class: pd.DataFrame) -> pd.DataFrame:
    frame = per_class.assign(model=model_names(per_class))
    classes = list(dict.fromkeys(frame["class"]))
    return frame.pivot_table(index="model", columns="class", values="f1", aggfunc="mean", sort=False)[classes].reset_index()


def task_report(context: ReportContext) -> str:
    """Write the task's tables and figures; the Markdown lines that end the comparison section ("" when none)."""
    per_class, confusion = collect_per_class(context.experiment_dir)
    write_table(context.report_dir / "tables", "per_class", per_class)
    plot_confusion_matrices(confusion, context.trials, context.report_dir / "figures" / "confusion.png")
    damaged = damaged_lines(damaged_arms(context.trials, TEST_PER_CLASS_FILE))
    if per_class.empty and not damaged:
        return ""
    lines = ["## Per-class F1 on the test split", "",
             "Mean over seeds; precision, recall, support and every arm are in `tables/per_class.csv`.", ""]
    lines += [markdown_table(_per_class_table(per_class))] if not per_class.empty else []
    lines += [*damaged, *([""] if damaged else []), "![Normalised confusion matrices](figures/confusion.png)", ""]
    return "\n".join(lines)
