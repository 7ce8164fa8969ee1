"""FERBench reports: collect an experiment folder into tables and render them."""

from __future__ import annotations

from pathlib import Path

from harness.experiment import experiment_paths, read_json
from harness.atomic import atomic_write_text
from reports.collect import collect, trial_statuses
from reports.markdown import render_markdown

__all__ = ["build_report", "collect", "trial_statuses"]


def build_report(experiment_dir: str | Path) -> Path:
    """Write ``report/report.md``, ``report/tables/{epochs,trials}.csv`` and ``report/figures/``;
    returns the report folder."""
    experiment_dir = Path(experiment_dir)
    paths = experiment_paths(experiment_dir)
    if not paths["grid"].is_file():
        raise FileNotFoundError(f"{experiment_dir} is not a FERBench experiment (no {paths['grid'].relative_to(experiment_dir)})")
    epochs, trials = collect(experiment_dir)
    tables = paths["report"] / "tables"
    atomic_write_text(tables / "epochs.csv", epochs.to_csv(index=False))
    atomic_write_text(tables / "trials.csv", trials.to_csv(index=False))
    manifest = read_json(paths["manifest"])
    data_section = None
    if "data_summary" in manifest:  # experiments of earlier versions have split_class_counts only
        from reports.data_section import render_data_section

        data_section = render_data_section(manifest["data_summary"], paths["report"] / "figures")
    atomic_write_text(paths["report"] / "report.md", render_markdown(manifest, trials, data_section))
    return paths["report"]
