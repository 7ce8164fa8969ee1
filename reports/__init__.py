"""FERBench reports: collect an experiment folder into tables and render them."""

from __future__ import annotations

from pathlib import Path

from harness.experiment import experiment_paths, read_json
from harness.atomic import atomic_write_text
from reports.collect import collect, trial_statuses
from reports.markdown import render_markdown

__all__ = ["build_report", "collect", "trial_statuses"]


def build_report(experiment_dir: str | Path) -> Path:
    """Write ``report/report.md`` and ``report/tables/{epochs,trials}.csv``; returns the report folder."""
    experiment_dir = Path(experiment_dir)
    paths = experiment_paths(experiment_dir)
    if not paths["grid"].is_file():
        raise FileNotFoundError(f"{experiment_dir} is not a FERBench experiment (no {paths['grid'].relative_to(experiment_dir)})")
    epochs, trials = collect(experiment_dir)
    tables = paths["report"] / "tables"
    atomic_write_text(tables / "epochs.csv", epochs.to_csv(index=False))
    atomic_write_text(tables / "trials.csv", trials.to_csv(index=False))
    atomic_write_text(paths["report"] / "report.md", render_markdown(read_json(paths["manifest"]), trials))
    return paths["report"]
