"""``ferbench report A B … --compare``: one report that sets experiments side by side.

Why a separate report: two studies (another dataset, another split, a changed recipe) are run at
different times, so their arms are not paired by seed. Per model (``<backbone>_<init>_<variant>``)
each experiment's mean over seeds is shown with its 95% t interval, and every later experiment is
compared with the first by the difference of means with a Welch 95% interval; a difference is
claimed only where that interval excludes 0. Experiments on different data say so in the header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferbench.harness.study.atomic import atomic_write_text
from ferbench.harness.spec import StudySpec
from ferbench.reports.collect import collect, read_manifest, read_spec
from ferbench.reports.comparison import comparison_tables, write_table
from ferbench.reports.derived import fold_test_train_ratio, model_names
from ferbench.reports.escaping import md_code, md_text
from ferbench.reports.markdown import markdown_table, split_text
from ferbench.reports.stats import welch_interval

COMPARED_METRICS = {  # trial-level metric → label
    "test_acc": "test acc", "test_macro_f1": "test macro F1", "initial_acc": "initial val acc",
    "infer_latency_ms": "latency ms", "train_images_per_s": "train img/s",
}


def _experiment_summary(experiment_dir: Path) -> tuple[dict, StudySpec, pd.DataFrame, pd.Series, int]:
    """(manifest, its spec, per-model summary rows of the compared metrics, arm status counts, arms with damaged files)."""
    manifest = read_manifest(experiment_dir)
    spec = read_spec(experiment_dir, manifest).spec
    epochs, trials = collect(experiment_dir)
    tables = comparison_tables(epochs, trials, spec.report.window, spec.train.epochs, fold_test_train_ratio(spec.split))
    summary = tables["summary"]
    summary = summary[summary["metric"].isin(COMPARED_METRICS)].copy()
    summary["model"] = model_names(summary)
    return manifest, spec, summary, trials["status"].value_counts(), int(trials["damaged"].astype(bool).sum())


def comparison_table(names: list[str], summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """Long table: one row per model × metric × experiment with n / mean / std / interval, and for
    experiments after the first the difference to the first with its Welch interval."""
    rows = []
    for name, summary in zip(names, summaries):
        for row in summary.itertuples(index=False):
            rows.append({"experiment": name, "model": row.model, "metric": row.metric, "n": row.n,
                         "mean": row.mean, "std": row.std, "ci95_low": row.ci95_low, "ci95_high": row.ci95_high})
    table = pd.DataFrame(rows, columns=["experiment", "model", "metric", "n", "mean", "std", "ci95_low", "ci95_high"])
    reference = table[table["experiment"] == names[0]].set_index(["model", "metric"])
    diffs = []
    for row in table.itertuples(index=False):
        key = (row.model, row.metric)
        if row.experiment == names[0] or key not in reference.index:
            diffs.append((np.nan, np.nan, np.nan))
            continue
        ref = reference.loc[key]
        low, high = welch_interval(ref["mean"], ref["std"], int(ref["n"]), row.mean, row.std, int(row.n))
        diffs.append((row.mean - ref["mean"], low, high))
    table[["diff_vs_first", "diff_ci95_low", "diff_ci95_high"]] = pd.DataFrame(diffs, index=table.index, columns=range(3), dtype=float)
    table["excludes_zero"] = (table["diff_ci95_low"] > 0) | (table["diff_ci95_high"] < 0)
    return table


def _cell(row) -> str:
    if row.n == 0 or pd.isna(row.mean):
        return "–"
    digits = 0 if row.metric == "train_images_per_s" else 3
    text = f"{row.mean:,.{digits}f}"
    if row.n >= 2 and not pd.isna(row.ci95_low):
        text += f" [{row.ci95_low:,.{digits}f}, {row.ci95_high:,.{digits}f}]"
    text += f" (n={row.n})"
    if not pd.isna(row.diff_vs_first):
        text += f"; Δ {row.diff_vs_first:+,.{digits}f}"
        if not pd.isna(row.diff_ci95_low):
            text += f" [{row.diff_ci95_low:+,.{digits}f}, {row.diff_ci95_high:+,.{digits}f}]"
            text += " **excludes 0**" if row.excludes_zero else ""
    return text


def _metric_table(table: pd.DataFrame, metric: str, names: list[str]) -> pd.DataFrame:
    rows = table[table["metric"] == metric]
    wide = rows.assign(cell=[_cell(r) for r in rows.itertuples(index=False)]).pivot(
        index="model", columns="experiment", values="cell")
    models = list(dict.fromkeys(rows["model"]))
    return wide.reindex(index=models, columns=names).fillna("not in this experiment").reset_index()


def _header(names: list[str], manifests: list[dict], specs: list[StudySpec], statuses: list[pd.Series],
            damaged: list[int]) -> list[str]:
    rows = []
    for name, manifest, spec, counts, n_damaged in zip(names, manifests, specs, statuses, damaged):
        dataset = manifest["dataset"]
        arms = ", ".join(f"{n} {s}" for s, n in counts.items())
        arms += f"; {n_damaged} with damaged files (see its report)" if n_damaged else ""
        rows.append({"experiment": name, "study": manifest["study"],
                     "dataset": f"{dataset['name']} ({dataset['fingerprint_sha256'][:12]})", "images": dataset["images"],
                     "split": split_text(spec.split), "epochs": spec.train.epochs, "arms": arms})
    lines = [markdown_table(pd.DataFrame(rows)).rstrip("\n")]
    notes = [""]
    if len({m["dataset"]["fingerprint_sha256"] for m in manifests}) > 1:
        notes.append("**The experiments use different data** (dataset fingerprints differ): a difference mixes "
                     "the effect of the data with that of the models.")
    if any("incomplete" in counts for counts in statuses):
        notes.append("**Partial results**: some arms have not finished (running, or interrupted); only recorded "
                     "trials count.")
    return lines + notes


def build_comparison(experiment_dirs: list[Path], out_dir: Path) -> Path:
    """Write ``report.md``, ``tables/comparison.csv|.parquet`` into ``out_dir``; returns it."""
    names = [Path(d).name for d in experiment_dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in experiment_dirs]
    loaded = [_experiment_summary(Path(d)) for d in experiment_dirs]
    manifests, specs, summaries, statuses, damaged = (list(x) for x in zip(*loaded))
    table = comparison_table(names, summaries)
    write_table(out_dir / "tables", "comparison", table)
    lines = [f"# FERBench comparison — {' vs '.join(md_text(n) for n in names)}", "",
             *_header(names, manifests, specs, statuses, damaged), "",
             f"Per model: mean over completed seeds [95% t interval] (n seeds); for {md_code(names[0])}'s followers, "
             f"Δ = their mean − {md_code(names[0])}'s with a Welch 95% interval (the experiments are independent, not "
             "paired by seed); a difference is claimed only where the interval excludes 0.", ""]
    for metric, label in COMPARED_METRICS.items():
        if (table["metric"] == metric).any():
            cells = markdown_table(_metric_table(table, metric, names), formatted=names)  # the cells: ``_cell``'s numbers
            lines += [f"## {label[0].upper()}{label[1:]}", "", cells]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))
    return out_dir
