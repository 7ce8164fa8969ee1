"""The comparison part of the report: the Smelyakov MCR/MOFR tables, statistics across seeds, the
paired pretrained − random differences and per-class F1, as tables (CSV + Parquet) and Markdown.

Why one module: the same frames go to ``tables/`` and into ``report.md``, so the numbers a reader
sees are the numbers in the files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ferbench.harness.spec import setting_text
from ferbench.reports.collect import collect, network_rows
from ferbench.reports.derived import (
    axis_keys, did_not_learn, fold_test_train_ratio, initial_metrics, mcr_mofr, model_names, paired_differences,
    seed_summary, settings_in_variant, smelyakov_tables,
)
from ferbench.reports.markdown import markdown_table

SUMMARY_METRICS = {  # trial-level metric → column title in the report's seed table
    "test_acc": "test acc", "test_macro_f1": "test macro F1", "test_weighted_f1": "test weighted F1",
    "initial_acc": "initial val acc", "initial_loss": "initial val loss", "best_val_acc": "best val acc",
    "params_trainable": "trainable params", "train_images_per_s": "train img/s", "train_time_s": "train s",
    "infer_latency_ms": "latency ms (batch 1)", "infer_images_per_s": "infer img/s", "wall_time_s": "wall s",
}
DIFFERENCE_METRICS = ("test_acc", "test_macro_f1", "initial_acc")
DIFFERENCE_CELLS = ("mean difference", "95% CI", "p (t; sign-flip)", "verdict")  # written here, numbers and bold only
WHOLE_NUMBERS = {"params_trainable", "train_images_per_s", "train_time_s", "infer_images_per_s", "wall_time_s"}


def comparison_tables(epochs: pd.DataFrame, trials: pd.DataFrame, window: int, last_epoch: int,
                      test_train_ratio: float | None = None) -> dict[str, pd.DataFrame]:
    """``trials`` enriched with the initial (epoch-1) metrics and ``did_not_learn``, ``mcr_mofr``,
    ``summary`` (long, per arm group and metric) and ``differences`` (paired). ``test_train_ratio``:
    k-fold studies' corrected intervals (``ferbench.reports.derived.fold_test_train_ratio``)."""
    enriched, epochs = trials, network_rows(epochs)
    if not epochs.empty:
        initial = initial_metrics(epochs)[["arm_id", "initial_acc", "initial_loss"]]
        flat = did_not_learn(epochs).rename("did_not_learn")
        enriched = trials.merge(initial, on="arm_id", how="left").merge(flat, left_on="arm_id", right_index=True, how="left")
        enriched["did_not_learn"] = enriched["did_not_learn"].astype("boolean").fillna(False).astype(bool)
    differences = [paired_differences(enriched, metric, test_train_ratio) for metric in DIFFERENCE_METRICS if metric in enriched]
    return {
        "trials": enriched,
        "mcr_mofr": mcr_mofr(epochs, window, last_epoch),
        "summary": seed_summary(enriched, test_train_ratio=test_train_ratio),
        "differences": pd.concat(differences, ignore_index=True) if differences else pd.DataFrame(),
    }


def tidy_tables(experiment_dir: Path, spec) -> dict:
    """The report's tidy tables (epochs, trials, mcr_mofr, summary, differences) of an experiment, computed
    with the stored spec's settings: what ``build_report`` writes to ``tables/`` and the Python API returns."""
    epochs, trials = collect(experiment_dir)
    return {"epochs": epochs, **comparison_tables(epochs, trials, spec.report.window, spec.train.epochs,
                                                  fold_test_train_ratio(spec.split))}


def _mean_std(row: pd.Series) -> str:
    if row["n"] == 0 or pd.isna(row["mean"]):
        return "–"
    digits = 0 if row["metric"] in WHOLE_NUMBERS else 3
    text = f"{row['mean']:,.{digits}f}"
    if row["n"] > 1 and not pd.isna(row["std"]):
        text += f" ± {row['std']:,.{digits}f} [{row['ci95_low']:,.{digits}f}, {row['ci95_high']:,.{digits}f}]"
    return text


def _seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    shown = summary[summary["metric"].isin(SUMMARY_METRICS)].copy()
    shown["model"] = model_names(shown)
    shown["cell"] = shown.apply(_mean_std, axis=1)
    n = shown.groupby("model", sort=False)["n"].max()
    table = shown.pivot(index="model", columns="metric", values="cell")
    table = table.reindex(index=n.index, columns=[m for m in SUMMARY_METRICS if m in table.columns])
    table.insert(0, "seeds", n)
    return table.rename(columns=SUMMARY_METRICS).reset_index()


def _differences_table(differences: pd.DataFrame) -> pd.DataFrame:
    table = differences.copy()
    table["within"] = table["variant"].where(table["variant"].notna(), table["init"])
    for axis in axis_keys(table):  # as the arm ids write them (1e-09, not 0.000)
        table[axis] = table[axis].map(setting_text)
    table["difference"] = table["mean_diff"].map(lambda v: "–" if pd.isna(v) else f"{v:+.3f}")
    table["95% CI"] = ["–" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]" for low, high in zip(table["ci_low"], table["ci_high"])]
    table["p"] = [_p_text(p, flip) for p, flip in zip(table["p_value"], table["p_sign_flip"])]
    table["verdict"] = ["**differs**" + (f" ({note})" if note else "") if claim else note
                        for claim, note in zip(table["claim"], table["note"])]
    columns = {"comparison": "comparison", "backbone": "backbone", "within": "variant / init",
               **{axis: axis for axis in axis_keys(table)}, "metric": "metric",  # pairs hold the extra axes fixed
               "n_pairs": "pairs", "difference": "mean difference", "95% CI": "95% CI", "p": "p (t; sign-flip)",
               "verdict": "verdict"}
    return table[list(columns)].rename(columns=columns)


def _p_text(p: float, flip: float) -> str:
    if pd.isna(p):
        return "–"
    return f"{p:.2g}" + ("" if pd.isna(flip) else f"; {flip:.2g}")


def draw_figures(epochs: pd.DataFrame, trials: pd.DataFrame, tables: dict[str, pd.DataFrame], folder) -> None:
    """The comparison figures, PNG, into the report's ``figures`` folder (placeholders when empty). The
    figures tell models apart by backbone, init and variant, so extra-axis values join the variant."""
    from ferbench.reports import figures

    epochs, trials = settings_in_variant(network_rows(epochs)), settings_in_variant(trials)
    tables = {**tables, "mcr_mofr": settings_in_variant(tables["mcr_mofr"])}
    figures.plot_curves(epochs, folder / "curves.png")
    figures.plot_initial_bars(epochs, folder / "initial.png")
    figures.plot_mcr_mofr_heatmaps(tables["mcr_mofr"], folder / "mcr_mofr.png")
    costs = figures.cost_summary(trials)
    figures.plot_accuracy_vs_cost(costs, folder / "accuracy_vs_params.png", cost="params_trainable")
    figures.plot_accuracy_vs_cost(costs, folder / "accuracy_vs_throughput.png", cost="train_images_per_s")


def render_comparison(tables: dict[str, pd.DataFrame], window: int) -> str:
    """Markdown sections: curves, convergence and overfitting, across seeds, pretrained vs random;
    figures linked from ``figures/`` (see ``draw_figures``). The task's part follows (``ferbench.reports.tasks``)."""
    lines = [
        "## Learning curves (Smelyakov et al., Figs 5–10)", "",
        "![Accuracy and loss over epochs per backbone: train and val, pretrained solid, random dashed](figures/curves.png)", "",
        "![Validation accuracy and loss after epoch 1](figures/initial.png)", "",
        "## Convergence and overfitting (Smelyakov et al., Tables 2–5)", "",
        f"For a metric M with M_0 before training and a window of epochs a..b (windows of {window} epochs): "
        "MCR(a..b) = (1/(b−a+1)) · Σ_{e=a..b} (M_e − M_{e−1}) on the training metric (mean convergence rate); "
        "MOFR(a..b) = the same on G_e = M_e(train) − M_e(val) (mean overfitting rate). Computed for accuracy and for "
        "loss; rows `<backbone>_<init>`, means over seeds; a window with a missing epoch is blank. "
        "Initial accuracy / loss are the validation values after epoch 1.", "",
    ]
    if tables["mcr_mofr"].empty:
        lines += ["No epochs recorded yet.", ""]
    for title, table in smelyakov_tables(tables["mcr_mofr"]).items():
        lines += [f"### {title[0].upper()}{title[1:]}", "", markdown_table(table.reset_index(), digits=4)]
    lines += ["![MCR and MOFR per window](figures/mcr_mofr.png)", ""]
    lines += [
        "## Across seeds", "",
        "Mean ± standard deviation [95% Student-t confidence interval] over the completed seeds (and folds) of "
        "each model; one seed shows the value alone. In a k-fold study the interval is the corrected "
        "resampled one (Nadeau & Bengio): folds share training data, so a plain t interval over them would be too "
        "narrow. These intervals describe each mean; whether two models differ is read from their paired "
        "difference (below and in the Recommendation), not from whether these intervals overlap. "
        "All metrics are in `tables/summary.csv`.", "",
        markdown_table(_seed_table(tables["summary"]), formatted=SUMMARY_METRICS.values()),
        "![Test accuracy vs trainable parameters, Pareto front](figures/accuracy_vs_params.png)", "",
        "![Test accuracy vs training throughput, Pareto front](figures/accuracy_vs_throughput.png)", "",
    ]
    if not tables["differences"].empty:
        lines += [
            "## Pretrained vs random, variant vs baseline", "",
            "Paired by seed (and fold): the mean of (pretrained − random) per backbone and of (variant − baseline), "
            "with the paired Student-t 95% interval and p-value (over folds: the corrected resampled t of Nadeau & "
            "Bengio, since folds share training data) and, for up to 10 pairs, the exact sign-flip permutation p. "
            "A difference is claimed only with at least 3 pairs and an interval that excludes 0; the verdict says "
            "why not otherwise, and how many seeds a difference of the size seen would need.", "",
            markdown_table(_differences_table(tables["differences"]), formatted=DIFFERENCE_CELLS),
        ]
    return "\n".join(lines)


def write_table(folder, name: str, frame: pd.DataFrame) -> None:
    """``name.csv`` and ``name.parquet`` side by side, each written atomically."""
    import io

    from ferbench.harness.study.atomic import atomic_write_bytes, atomic_write_text

    atomic_write_text(folder / f"{name}.csv", frame.to_csv(index=False))
    buffer = io.BytesIO()
    frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(buffer, index=False)
    atomic_write_bytes(folder / f"{name}.parquet", buffer.getvalue())

