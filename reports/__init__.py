"""FERBench reports: collect an experiment folder into tables, figures and the rendered report."""

from __future__ import annotations

import logging
from pathlib import Path

from ferbench.harness.study.atomic import atomic_write_text
from ferbench.harness.study.layout import experiment_paths
from ferbench.harness.tasks import get_task_info
from ferbench.harness.variants import used_variants
from ferbench.harness.units import load_object
from ferbench.reports.collect import collect, read_grid, read_manifest, read_spec, relative, trial_statuses
from ferbench.reports.comparison import draw_figures, render_comparison, tidy_tables, write_table
from ferbench.reports.derived import fold_test_train_ratio
from ferbench.reports.html import write_html_report
from ferbench.reports.markdown import md_cell, render_markdown
from ferbench.reports.recommendation import render_recommendation
from ferbench.reports.default_arm import recommended_arm
from ferbench.reports.context import ReportContext
from ferbench.reports.cross_dataset import cross_dataset_section
from ferbench.reports.tree import tree_section
from ferbench.reports.sample_predictions import collect_sample_probabilities, plot_sample_predictions, samples_section

__all__ = ["build_comparison_report", "build_report", "collect", "recommended_arm", "tidy_tables", "trial_statuses"]
logger = logging.getLogger(__name__)


def build_comparison_report(experiment_dirs: list[Path], out_dir: Path) -> Path:
    """``ferbench report A B … --compare``: the experiments side by side in ``out_dir``."""
    from ferbench.reports.cross_experiment import build_comparison

    for folder in experiment_dirs:
        if not experiment_paths(folder)["grid"].is_file():
            raise FileNotFoundError(f"{folder} is not a FERBench experiment (no ferbench/grid.json)")
    build_comparison(experiment_dirs, out_dir)
    write_html_report(out_dir)
    return out_dir


def build_report(experiment_dir: str | Path) -> Path:
    """Write ``report/report.md``, ``report/tables/`` (CSV and Parquet) and ``report/figures/``;
    returns the report folder. Works on running, interrupted and finished experiments alike, and on
    damaged ones: a trial file that cannot be read is named (``damaged: FILE``) where its arm would be,
    and only a damaged ``manifest.json`` or ``grid.json`` stops the report (one ValueError naming it). The
    manifest's spec is read into the spec model once (``ferbench.reports.collect.read_spec``); one written by
    an earlier version renders, with what reading it changed listed in the Study section."""
    experiment_dir = Path(experiment_dir)
    paths = experiment_paths(experiment_dir)
    if not paths["grid"].is_file():
        raise FileNotFoundError(f"{experiment_dir} is not a FERBench experiment (no {paths['grid'].relative_to(experiment_dir)})")
    manifest = read_manifest(experiment_dir)
    stored = read_spec(experiment_dir, manifest)
    spec = stored.spec
    if stored.notes:  # a spec of an earlier version: the report says what it changed, in its Study section
        logger.warning("%s: %d setting(s) of the stored spec read with a change (listed in the report's Study section): %s",
                       paths["manifest"], len(stored.notes), "; ".join(stored.notes))
    window = spec.report.window
    comparison = tidy_tables(experiment_dir, spec)
    epochs = comparison.pop("epochs")
    task = get_task_info(spec.task)
    ratio = fold_test_train_ratio(spec.split)
    trials = comparison["trials"]
    tables = paths["report"] / "tables"
    named = {"epochs": epochs}
    if task.class_samples:
        samples, named["sample_predictions"] = collect_sample_probabilities(experiment_dir)
    for name, frame in {**named, **comparison}.items():
        write_table(tables, name, frame)
    draw_figures(epochs, trials, comparison, paths["report"] / "figures")
    if task.class_samples:
        plot_sample_predictions(samples, named["sample_predictions"], paths["report"] / "figures" / "sample_predictions.png")
    # The skeleton knows no task and no variant: each one's part comes through its registry entry.
    context = ReportContext(experiment_dir, paths["report"], spec, epochs, trials)
    task_part = load_object(task.report)(context)
    variant_sections = [load_object(info.report_section)(context)
                        for info in used_variants(read_grid(experiment_dir)) if info.report_section]
    tree_part = tree_section(context)
    sections = [
        render_comparison(comparison, window) + (f"\n{task_part}" if task_part else ""),
        *([tree_part] if tree_part else []),
        *([samples_section(experiment_dir, trials)] if task.class_samples else []),
        *variant_sections,
        *([cross_dataset_section(context)] if spec.eval.datasets else []),  # eval.datasets: the extra test sets
        render_recommendation(comparison["summary"], comparison["differences"], comparison["mcr_mofr"], trials, ratio,
                              task.headline),
    ]
    data_section = _data_section(manifest, experiment_dir) if "data_summary" in manifest else None  # earlier versions
    atomic_write_text(paths["report"] / "report.md",
                      render_markdown(manifest, spec, trials, data_section, sections, spec_notes=stored.notes))
    write_html_report(paths["report"])
    return paths["report"]


def _data_section(manifest: dict, experiment_dir: Path) -> str:
    """The "## Data" section, or a note naming the manifest when its ``data_summary`` is unusable."""
    from ferbench.reports.data_section import render_data_section

    figures = experiment_paths(experiment_dir)["report"] / "figures"
    try:
        return render_data_section(manifest["data_summary"], figures)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:  # hand-edited or cut: the rest stands
        path = relative(experiment_paths(experiment_dir)["manifest"], experiment_dir)
        return f"## Data\n\n- damaged: {md_cell(path)} (its data_summary cannot be read: {md_cell(repr(err))})\n"
