"""The report's "## Recommendation" section: which model is best on each criterion, the Pareto set
(test accuracy vs trainable parameters) and the Smelyakov et al. decision rule, phrased with the
study's numbers.

The one rule this module keeps: never claim a difference the confidence intervals do not support.
A model is called best "clear of the runner-up" only when its 95% Student-t interval across seeds
(``ci95_low`` / ``ci95_high`` from ``reports.derived.seed_summary``) does not overlap any other
model's; overlapping intervals read "tied within the 95% CI", and a model with one seed (no interval)
reads "no difference is established". Pretrained vs random is stated from ``paired_differences``
rows and "helps" / "hurts" only where ``excludes_zero`` is True.

Pure: DataFrames in, Markdown text out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports.derived import GROUP_KEYS, t_interval

CRITERIA = [  # (metric in summary, label, higher is better)
    ("initial_acc", "Best initial validation accuracy", True),
    ("test_acc", "Best test accuracy", True),
    ("test_macro_f1", "Best test macro F1", True),
]
METRIC_LABELS = {"test_acc": "test acc", "test_macro_f1": "test macro F1", "initial_acc": "initial val acc"}
WHOLE = {"params_trainable", "train_images_per_s", "infer_images_per_s"}
RATES = {"MCR", "MOFR"}
STAT_COLUMNS = ["model", "n", "mean", "std", "ci95_low", "ci95_high"]


# --------------------------------------------------------------------------- naming and formatting


def _multi_variant(summary: pd.DataFrame) -> bool:
    return summary["variant"].nunique() > 1 if "variant" in summary.columns else False


def _names(frame: pd.DataFrame, multi_variant: bool) -> pd.Series:
    names = frame["backbone"].astype(str) + "_" + frame["init"].astype(str)
    if multi_variant:
        names = names + "_" + frame["variant"].astype(str)
    return names


def _value(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in WHOLE:
        return f"{value:,.0f}"
    if metric in RATES:
        return f"{value:+.4f}"
    return f"{value:.3f}"


def _cell(metric: str, row, unit: str = "") -> str:
    """`model` mean [low, high] (the interval only with two or more seeds)."""
    text = f"`{row.model}` {_value(metric, row.mean)}{unit}"
    if row.n >= 2 and not pd.isna(row.ci95_low):
        text += f" [95% CI {_value(metric, row.ci95_low)}, {_value(metric, row.ci95_high)}; {row.n} seeds]"
    else:
        text += f" ({row.n} seed{'s' if row.n != 1 else ''})"
    return text


# --------------------------------------------------------------------------- per-model statistics


def _completed_models(summary: pd.DataFrame, multi_variant: bool) -> tuple[list[str], list[str]]:
    """(models with at least one completed trial, models with none), in order of appearance."""
    if summary.empty:
        return [], []
    frame = summary.assign(model=_names(summary, multi_variant))
    n = frame.groupby("model", sort=False)["n"].max()
    return [m for m in n.index if n[m] > 0], [m for m in n.index if n[m] <= 0]


def _metric_stats(summary: pd.DataFrame, metric: str, multi_variant: bool, models: list[str]) -> pd.DataFrame:
    rows = summary[summary["metric"] == metric]
    frame = rows.assign(model=_names(rows, multi_variant))
    frame = frame[frame["model"].isin(models) & (frame["n"] > 0) & frame["mean"].notna()]
    return frame[STAT_COLUMNS].reset_index(drop=True)


def _window_order(label) -> int:
    return int(str(label).split("-")[0])


def _rate_stats(mcr: pd.DataFrame, kind: str, first: bool, multi_variant: bool, models: list[str]) -> tuple[str | None, pd.DataFrame]:
    """Accuracy-based ``kind`` over the first (or last) window: per model, mean / std / t interval
    over seeds (NaN seeds skipped)."""
    if mcr is None or mcr.empty:
        return None, pd.DataFrame(columns=STAT_COLUMNS)
    selected = mcr[(mcr["metric"] == "accuracy") & (mcr["kind"] == kind)]
    if selected.empty:
        return None, pd.DataFrame(columns=STAT_COLUMNS)
    windows = sorted(selected["window"].unique(), key=_window_order)
    window = windows[0] if first else windows[-1]
    chosen = selected[selected["window"] == window]
    chosen = chosen.assign(model=_names(chosen, multi_variant))
    chosen = chosen[chosen["model"].isin(models)]
    stats = chosen.groupby("model", sort=False)["value"].agg(n="count", mean="mean", std="std").reset_index()
    stats = stats[stats["n"] > 0].reset_index(drop=True)
    stats.loc[stats["n"] < 2, "std"] = np.nan
    stats["ci95_low"], stats["ci95_high"] = t_interval(stats["mean"], stats["std"], stats["n"])
    return str(window), stats[STAT_COLUMNS]


# --------------------------------------------------------------------------- ranking with intervals


def _overlap(a, b) -> bool:
    return a.ci95_low <= b.ci95_high and b.ci95_low <= a.ci95_high


def _rank(stats: pd.DataFrame, higher: bool, exact: bool = False) -> dict | None:
    """The best model and which others it is not established to beat: ``tied`` (intervals overlap,
    or the same value for an ``exact`` metric) and ``open`` (no interval: one seed)."""
    if stats.empty:
        return None
    ordered = stats.sort_values("mean", ascending=not higher, kind="stable").reset_index(drop=True)
    rows = list(ordered.itertuples(index=False))
    best, others = rows[0], rows[1:]
    if exact:
        tied = [o for o in others if o.mean == best.mean]
        unresolved = []
    elif best.n < 2 or pd.isna(best.ci95_low):
        tied, unresolved = [], others
    else:
        tied = [o for o in others if o.n >= 2 and not pd.isna(o.ci95_low) and _overlap(best, o)]
        unresolved = [o for o in others if o.n < 2 or pd.isna(o.ci95_low)]
    return {"best": best, "others": others, "tied": tied, "open": unresolved, "exact": exact}


def _verdict(rank: dict, metric: str, only: str = "(the only model with a value)") -> str:
    best, others = rank["best"], rank["others"]
    if not others:
        return only
    if rank["exact"]:
        if rank["tied"]:
            return "tied with " + ", ".join(f"`{o.model}`" for o in rank["tied"]) + " (same value)"
        return f"ahead of the runner-up `{others[0].model}` ({_value(metric, others[0].mean)}; an exact count, the same for every seed)"
    if best.n < 2 or pd.isna(best.ci95_low):
        return f"(one seed: no interval, so no difference is established; runner-up {_cell(metric, others[0])})"
    parts = []
    if rank["tied"]:
        parts.append("tied within the 95% CI with " + ", ".join(_cell(metric, o) for o in rank["tied"]))
    if rank["open"]:
        parts.append("no difference established from " + ", ".join(f"`{o.model}`" for o in rank["open"])
                     + " (one seed: no interval)")
    if not parts:
        return f"95% CI clear of the runner-up {_cell(metric, others[0])}"
    return "; ".join(parts)


def _contenders(rank: dict) -> list[str]:
    """The best model and every model it is not established to beat."""
    return [rank["best"].model, *(o.model for o in rank["tied"]), *(o.model for o in rank["open"])]


def _line(label: str, what: str, stats: pd.DataFrame, metric: str, higher: bool, exact: bool = False) -> str:
    rank = _rank(stats, higher, exact)
    if rank is None:
        return f"- **{label}** ({what}): not available (no completed model has a value)."
    return f"- **{label}** ({what}): {_cell(metric, rank['best'])} — {_verdict(rank, metric)}."


# --------------------------------------------------------------------------- Pareto set


def _pareto(acc: pd.DataFrame, params: pd.DataFrame) -> pd.DataFrame:
    points = acc[["model", "mean"]].rename(columns={"mean": "acc"}).merge(
        params[["model", "mean"]].rename(columns={"mean": "params"}), on="model")
    keep = []
    for row in points.itertuples(index=False):
        dominated = ((points["acc"] >= row.acc) & (points["params"] <= row.params)
                     & ((points["acc"] > row.acc) | (points["params"] < row.params))).any()
        keep.append(not dominated)
    return points[keep].sort_values(["params", "acc"], ascending=[True, False], kind="stable").reset_index(drop=True)


def pareto_models(summary: pd.DataFrame) -> list[str]:
    """Models not dominated on (max mean ``test_acc``, min mean ``params_trainable``); models with
    no completed trials left out; ties (identical points) kept. Fewest parameters first. Names as in
    the report: ``<backbone>_<init>``, with ``_<variant>`` when the study has several variants."""
    multi = _multi_variant(summary)
    models, _ = _completed_models(summary, multi)
    points = _pareto(_metric_stats(summary, "test_acc", multi, models), _metric_stats(summary, "params_trainable", multi, models))
    return points["model"].tolist()


# --------------------------------------------------------------------------- paired differences


def _difference_lines(differences: pd.DataFrame, multi_variant: bool) -> list[str]:
    if differences is None or differences.empty:
        return []
    lines = []
    differences = differences[differences["n_pairs"] > 0]  # pairs the grid never forms say nothing
    for comparison, block in differences.groupby("comparison", sort=False):
        treated = str(comparison).split(" − ")[0]
        is_init = comparison == "pretrained − random"
        title = "Pretrained vs random" if is_init else f"{treated} vs baseline"
        actor = "pretraining" if is_init else f"`{treated}`"
        items = []
        for row in block.itertuples(index=False):
            if is_init:
                subject = f"`{row.backbone}`" + (f" ({row.variant})" if multi_variant and not pd.isna(row.variant) else "")
            else:
                subject = f"`{row.backbone}_{row.init}`"
            label = METRIC_LABELS.get(row.metric, row.metric)
            diff = "–" if pd.isna(row.mean_diff) else f"{row.mean_diff:+.3f}"
            if pd.isna(row.ci_low):
                interval = f"{row.n_pairs} seed pair{'s' if row.n_pairs != 1 else ''}: no interval"
            else:
                interval = f"95% CI [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
            if bool(row.excludes_zero):
                verb = "helps" if row.mean_diff > 0 else "hurts"
                items.append(f"{actor} {verb} {subject} ({diff} {label}, {interval})")
            else:
                items.append(f"{subject}: no established difference in {label} ({diff}, {interval})")
        lines.append(f"- **{title}** (paired by seed; a difference is claimed only where its 95% bootstrap "
                     f"interval excludes 0): " + "; ".join(items) + ".")
    return lines


# --------------------------------------------------------------------------- the section


def render_recommendation(summary: pd.DataFrame, differences: pd.DataFrame, mcr: pd.DataFrame) -> str:
    """The "## Recommendation" Markdown section from ``seed_summary``, ``paired_differences`` and
    ``mcr_mofr`` frames (as in ``reports.comparison.comparison_tables``)."""
    lines = ["## Recommendation", ""]
    if summary is None or summary.empty:
        return "\n".join(lines + ["No models to compare.", ""])
    multi = _multi_variant(summary)
    models, left_out = _completed_models(summary, multi)
    lines += [
        "Means over the completed seeds, with the 95% Student-t interval where there are two or more. "
        "A model is called best *clear of* the others only where its interval overlaps none of theirs; "
        "otherwise it is tied, or (one seed, no interval) no difference is established.", "",
    ]
    if left_out:
        lines += ["Left out (no completed trials): " + ", ".join(f"`{m}`" for m in left_out) + ".", ""]
    if not models:
        return "\n".join(lines + ["No model has a completed trial, so there is nothing to recommend.", ""])

    stats = {metric: _metric_stats(summary, metric, multi, models)
             for metric in ("initial_acc", "test_acc", "test_macro_f1", "params_trainable", "train_images_per_s",
                            "infer_latency_ms", "infer_images_per_s")}
    for metric, label, higher in CRITERIA:
        lines.append(_line(label, f"`{metric}`", stats[metric], metric, higher))
    mcr_window, mcr_stats = _rate_stats(mcr, "MCR", True, multi, models)
    mofr_window, mofr_stats = _rate_stats(mcr, "MOFR", False, multi, models)
    lines.append(_line("Fastest convergence", f"accuracy-based MCR, epochs {mcr_window or '–'}, higher is faster",
                       mcr_stats, "MCR", True))
    lines.append(_line("Least overfitting", f"accuracy-based MOFR, epochs {mofr_window or '–'}, lower is less",
                       mofr_stats, "MOFR", False))
    lines.append(_line("Fewest trainable parameters", "`params_trainable`", stats["params_trainable"],
                       "params_trainable", False, exact=True))
    lines.append(_line("Highest training throughput", "`train_images_per_s`, images/s", stats["train_images_per_s"],
                       "train_images_per_s", True))
    lines.append(_line("Lowest inference latency", "`infer_latency_ms`, ms per image at batch 1", stats["infer_latency_ms"],
                       "infer_latency_ms", False))
    lines.append(_line("Highest inference throughput", "`infer_images_per_s`, images/s at the evaluation batch",
                       stats["infer_images_per_s"], "infer_images_per_s", True))

    pareto = _pareto(stats["test_acc"], stats["params_trainable"])
    if pareto.empty:
        lines.append("- **Pareto-optimal (test accuracy vs trainable parameters)**: not available.")
    else:
        lines.append("- **Pareto-optimal (test accuracy vs trainable parameters)**: " + ", ".join(
            f"`{p.model}` ({p.acc:.3f}, {p.params:,.0f} params)" for p in pareto.itertuples(index=False))
            + " (no other model is at least as accurate with as few parameters; means, so a point on the "
              "front need not differ from its neighbours beyond the seed noise).")
    lines += _difference_lines(differences, multi)
    lines += ["", *_decision_rule(stats, pareto), ""]
    return "\n".join(lines)


def _decision_rule(stats: dict[str, pd.DataFrame], pareto: pd.DataFrame) -> list[str]:
    """Smelyakov et al.'s rule, with our numbers."""
    text = ["**Decision rule (Smelyakov et al.)**", ""]
    accuracy = _rank(stats["test_acc"], higher=True)
    if accuracy is None:
        return text + ["No model has a test accuracy, so the rule cannot be applied."]
    contenders = _contenders(accuracy)
    speed = stats["train_images_per_s"]
    speed = speed[speed["model"].isin(contenders)]
    fast = _rank(speed, higher=True)
    within = ", ".join(f"`{m}`" for m in contenders)
    if fast is None:
        speed_text = f"no throughput recorded for the models within the CI of the best test accuracy ({within})"
    else:
        one_seed = " — one seed: no interval, so every model" if accuracy["best"].n < 2 else ""
        speed_text = (f"{_cell('train_images_per_s', fast['best'], ' images/s')} — highest throughput among those "
                      f"within the CI of the best test accuracy ({within}{one_seed}); "
                      f"{_verdict(fast, 'train_images_per_s', '(the only one with a throughput)')}")
    text.append(f"- If speed matters and data is plentiful: {speed_text}.")
    quality = _rank(stats["test_acc"][stats["test_acc"]["model"].isin(pareto["model"])], higher=True)
    if quality is None:
        text.append("- If quality matters and resources are limited: no Pareto set (test accuracy and trainable "
                    "parameters are both needed).")
    else:
        params = dict(zip(pareto["model"], pareto["params"]))
        best = quality["best"]
        smaller = [o for o in [*quality["tied"], *quality["open"]] if params[o.model] < params[best.model]]
        note = ""
        if smaller:
            note = ("; the smaller " + ", ".join(f"`{o.model}` ({params[o.model]:,.0f} params)" for o in smaller)
                    + " is not established to be less accurate")
        text.append(f"- If quality matters and resources are limited: {_cell('test_acc', best)} test acc, "
                    f"{params[best.model]:,.0f} trainable params — most accurate among the Pareto set; "
                    f"{_verdict(quality, 'test_acc', '(the only model in the Pareto set)')}{note}.")
    return text
