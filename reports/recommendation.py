"""The report's "## Recommendation" section: which model is best on each criterion, the Pareto set
(test accuracy vs trainable parameters) and the Smelyakov et al. decision rule, phrased with the
study's numbers.

The one rule this module keeps: never claim a difference the intervals do not support. A model is
called best "clear of" the others only when the paired 95% interval (``ferbench.reports.stats``: seed by
seed, the same splits) of its difference to every other model excludes 0 with at least 3 pairs;
otherwise it is "tied", or with fewer pairs "no difference is established". Overlap of the
per-model intervals is not used: it ignores the pairing. Pretrained vs random is stated from
``paired_differences`` rows and "helps" / "hurts" only where ``claim`` is True. Arms that did not
learn (a flat training curve) are named and ranked on nothing.

Pure: DataFrames in, Markdown text out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ferbench.reports.derived import axis_keys, model_names, pareto_optimal, settings_labels, unit_pairs, window_order
from ferbench.reports.escaping import md_code, md_text
from ferbench.reports.stats import MIN_PAIRS, PairedDifference, compare_paired, t_interval

CRITERIA = [  # (metric in summary, label, higher is better)
    ("initial_acc", "Best initial validation accuracy", True),
    ("test_acc", "Best test accuracy", True),
    ("test_macro_f1", "Best test macro F1", True),
]
METRIC_LABELS = {"test_acc": "test acc", "test_macro_f1": "test macro F1", "initial_acc": "initial val acc"}
QUALITY_NAMES = {"test_acc": "test accuracy", "test_macro_f1": "test macro F1"}  # what the decision rule ranks by
WHOLE = {"params_trainable", "train_images_per_s", "infer_images_per_s"}
RATES = {"MCR", "MOFR"}
SPEED_CRITERIA = [  # (metric, label, what, higher is better)
    ("train_images_per_s", "Highest training throughput", "`train_images_per_s`, images/s", True),
    ("infer_latency_ms", "Lowest inference latency", "`infer_latency_ms`, ms per image at batch 1", False),
    ("infer_images_per_s", "Highest inference throughput", "`infer_images_per_s`, images/s at the evaluation batch", True),
]
STAT_COLUMNS = ["model", "n", "mean", "std", "ci95_low", "ci95_high"]


# --------------------------------------------------------------------------- naming and formatting


def _multi_variant(summary: pd.DataFrame) -> bool:
    return summary["variant"].nunique() > 1 if "variant" in summary.columns else False


def _names(frame: pd.DataFrame, multi_variant: bool) -> pd.Series:
    """``<backbone>_<init>[_<variant>][_<extra-axis values>]``: the arm without its seed (``model_names``)."""
    return model_names(frame, variant=multi_variant)


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
    text = f"{md_code(row.model)} {_value(metric, row.mean)}{unit}"
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


def _rate_stats(mcr: pd.DataFrame, kind: str, first: bool, multi_variant: bool, models: list[str]) -> tuple[str | None, pd.DataFrame]:
    """Accuracy-based ``kind`` over the first (or last) window: per model, mean / std / t interval
    over seeds (NaN seeds skipped)."""
    if mcr is None or mcr.empty:
        return None, pd.DataFrame(columns=STAT_COLUMNS)
    selected = mcr[(mcr["metric"] == "accuracy") & (mcr["kind"] == kind)]
    if selected.empty:
        return None, pd.DataFrame(columns=STAT_COLUMNS)
    windows = window_order(selected["window"].unique())
    window = windows[0] if first else windows[-1]
    chosen = selected[selected["window"] == window]
    chosen = chosen.assign(model=_names(chosen, multi_variant))
    chosen = chosen[chosen["model"].isin(models)]
    stats = chosen.groupby("model", sort=False)["value"].agg(n="count", mean="mean", std="std").reset_index()
    stats = stats[stats["n"] > 0].reset_index(drop=True)
    stats.loc[stats["n"] < 2, "std"] = np.nan
    stats["ci95_low"], stats["ci95_high"] = t_interval(stats["mean"], stats["std"], stats["n"])
    return str(window), stats[STAT_COLUMNS]


# --------------------------------------------------------------------------- ranking with paired intervals


def _unit_values(trials: pd.DataFrame | None, mcr: pd.DataFrame | None, multi_variant: bool) -> pd.DataFrame:
    """Long frame model, seed, [fold], metric, value: every completed arm's value of every metric
    (trial metrics, and the accuracy-based MCR/MOFR of each window as ``MCR:<window>``), so two
    models can be compared pair by pair (same seed, same split)."""
    frames = []
    if trials is not None and not trials.empty:
        done = trials[trials["status"] == "completed"] if "status" in trials.columns else trials
        units = [k for k in ("seed", "fold") if k in done.columns]
        metrics = [c for c in done.select_dtypes(include="number").columns if c not in units and c not in axis_keys(done)]
        long = done.assign(model=_names(done, multi_variant))[["model", *units, *metrics]]
        frames.append(long.melt(id_vars=["model", *units], var_name="metric", value_name="value"))
    if mcr is not None and not mcr.empty:
        accuracy = mcr[mcr["metric"] == "accuracy"]
        units = [k for k in ("seed", "fold") if k in accuracy.columns]
        frames.append(accuracy.assign(model=_names(accuracy, multi_variant), metric=accuracy["kind"] + ":" + accuracy["window"].astype(str))
                      [["model", *units, "metric", "value"]])
    if not frames:
        return pd.DataFrame(columns=["model", "seed", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


@dataclass
class Ranker:
    """Ranks models on a metric and says which differences the paired intervals support."""

    values: pd.DataFrame  # from ``_unit_values``
    test_train_ratio: float | None = None  # k-fold studies: corrected resampled t

    def difference(self, metric: str, a: str, b: str) -> PairedDifference:
        """``a`` − ``b`` on ``metric``, paired by seed (and fold)."""
        rows = self.values[self.values["metric"] == metric]
        units = [k for k in ("seed", "fold") if k in rows.columns and rows[k].notna().any()]
        x, y, _ = unit_pairs(rows, units, rows["model"] == a, rows["model"] == b, "value")
        return compare_paired(x, y, self.test_train_ratio)

    def rank(self, stats: pd.DataFrame, metric: str, higher: bool, exact: bool = False) -> dict | None:
        """The best model (by mean) and, for every other: ``beaten`` (the paired interval of the
        difference is clear of 0 in the best's favour), ``tied`` (it includes 0, or favours the
        other on the shared seeds) or ``open`` (fewer than 3 pairs: no claim either way). An
        ``exact`` metric (a parameter count) ties only on equal values."""
        if stats.empty:
            return None
        ordered = stats.sort_values("mean", ascending=not higher, kind="stable").reset_index(drop=True)
        rows = list(ordered.itertuples(index=False))
        best, others = rows[0], rows[1:]
        result = {"best": best, "others": others, "tied": [], "open": [], "beaten": [], "diffs": {}, "exact": exact}
        for other in others:
            if exact:
                result["tied" if other.mean == best.mean else "beaten"].append(other)
                continue
            diff = self.difference(metric, best.model, other.model)
            result["diffs"][other.model] = diff
            if diff.n < MIN_PAIRS:
                result["open"].append(other)
            elif diff.claim and (diff.mean_diff > 0) == higher:
                result["beaten"].append(other)
            else:
                result["tied"].append(other)
        return result


def _signed(metric: str, value: float) -> str:
    if metric in WHOLE:
        return f"{value:+,.0f}"
    return f"{value:+.4f}" if metric in RATES else f"{value:+.3f}"


def _diff_text(metric: str, diff: PairedDifference) -> str:
    """Paired difference best − other, e.g. "difference +0.031 [+0.012, +0.050], 5 pairs"."""
    if not np.isfinite(diff.ci_low):
        return f"{diff.n} pair{'s' if diff.n != 1 else ''}"
    return (f"difference {_signed(metric, diff.mean_diff)} [{_signed(metric, diff.ci_low)}, "
            f"{_signed(metric, diff.ci_high)}], {diff.n} pairs")


def _verdict(rank: dict, metric: str, only: str = "(the only model with a value)") -> str:
    best, others = rank["best"], rank["others"]
    if not others:
        return only
    if rank["exact"]:
        if rank["tied"]:
            return "tied with " + ", ".join(md_code(o.model) for o in rank["tied"]) + " (same value)"
        return f"ahead of the runner-up {md_code(others[0].model)} ({_value(metric, others[0].mean)}; an exact count, the same for every seed)"
    parts = []
    if rank["tied"]:
        parts.append("tied (paired 95% CI of the difference includes 0) with " + ", ".join(
            f"{_cell(metric, o)} ({_diff_text(metric, rank['diffs'][o.model])})" for o in rank["tied"]))
    if rank["open"]:
        n = max(rank["diffs"][o.model].n for o in rank["open"])
        parts.append(f"too few seeds (n = {n}): no difference is established from "
                     + ", ".join(md_code(o.model) for o in rank["open"])
                     + f" (a claim needs at least {MIN_PAIRS} seed pairs; runner-up {_cell(metric, others[0])})")
    if not parts:
        runner = others[0]
        return (f"paired 95% CI clear of 0 against every other model; runner-up {_cell(metric, runner)} "
                f"({_diff_text(metric, rank['diffs'][runner.model])})")
    return "; ".join(parts)


def _contenders(rank: dict) -> list[str]:
    """The best model and every model it is not established to beat."""
    return [rank["best"].model, *(o.model for o in rank["tied"]), *(o.model for o in rank["open"])]


def _line(ranker: Ranker, label: str, what: str, stats: pd.DataFrame, metric: str, higher: bool,
          exact: bool = False, paired_as: str | None = None) -> str:
    rank = ranker.rank(stats, paired_as or metric, higher, exact)
    if rank is None:
        return f"- **{label}** ({what}): not available (no completed model has a value)."
    return f"- **{label}** ({what}): {_cell(metric, rank['best'])} — {_verdict(rank, metric)}."


# --------------------------------------------------------------------------- Pareto set


def _pareto(acc: pd.DataFrame, params: pd.DataFrame) -> pd.DataFrame:
    """model, acc, params of the models on the front of (max mean accuracy, min mean parameters)
    (``ferbench.reports.derived.pareto_optimal``), fewest parameters first."""
    points = acc[["model", "mean"]].rename(columns={"mean": "acc"}).merge(
        params[["model", "mean"]].rename(columns={"mean": "params"}), on="model")
    front = pareto_optimal(points, {"acc": True, "params": False})
    return front.sort_values(["params", "acc"], ascending=[True, False], kind="stable").reset_index(drop=True)


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
    differences = differences.assign(settings_suffix=settings_labels(differences).map(lambda label: f"_{label}" if label else ""))
    for comparison, block in differences.groupby("comparison", sort=False):
        treated = str(comparison).split(" − ")[0]
        is_init = comparison == "pretrained − random"
        title = "Pretrained vs random" if is_init else f"{treated} vs baseline"
        actor = "pretraining" if is_init else md_code(treated)
        items = []
        for row in block.itertuples(index=False):
            if is_init:  # within the same extra-axis values (``_lr1e-04``), as the pairs are
                subject = md_code(f"{row.backbone}{row.settings_suffix}") + (
                    f" ({md_text(row.variant)})" if multi_variant and not pd.isna(row.variant) else "")
            else:
                subject = md_code(f"{row.backbone}_{row.init}{row.settings_suffix}")
            label = METRIC_LABELS.get(row.metric, row.metric)
            diff = "–" if pd.isna(row.mean_diff) else f"{row.mean_diff:+.3f}"
            interval = "no interval" if pd.isna(row.ci_low) else f"95% CI [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
            interval += f", {row.n_pairs} pair{'s' if row.n_pairs != 1 else ''}"
            if bool(row.claim):
                verb = "helps" if row.mean_diff > 0 else "hurts"
                items.append(f"{actor} {verb} {subject} ({diff} {label}, {interval})")
            else:
                items.append(f"{subject}: no established difference in {label} ({diff}, {interval}; {row.note})")
        lines.append(f"- **{title}** (paired by seed; a difference is claimed only with at least {MIN_PAIRS} pairs "
                     "and a 95% interval that excludes 0): " + "; ".join(items) + ".")
    return lines


# --------------------------------------------------------------------------- the section


def render_recommendation(summary: pd.DataFrame, differences: pd.DataFrame, mcr: pd.DataFrame,
                          trials: pd.DataFrame | None = None, test_train_ratio: float | None = None,
                          quality: str = "test_acc") -> str:
    """The "## Recommendation" Markdown section from ``seed_summary``, ``paired_differences``,
    ``mcr_mofr`` and the (enriched) trials frames of ``ferbench.reports.comparison.comparison_tables``;
    ``test_train_ratio`` in k-fold studies (see ``ferbench.reports.derived.fold_test_train_ratio``).
    ``quality``: the test metric the Pareto set and the decision rule rank by, the task's headline
    (``TaskInfo.headline``: test accuracy for emotions, macro F1 over labels for action units)."""
    lines = ["## Recommendation", ""]
    if summary is None or summary.empty:
        return "\n".join(lines + ["No models to compare.", ""])
    multi = _multi_variant(summary)
    models, left_out = _completed_models(summary, multi)
    unit = "fold" if test_train_ratio is not None else "seed"
    lines += [
        f"Means over the completed {unit}s, with the 95% Student-t interval of each mean where there are two or more"
        + (" (corrected for folds sharing training data, Nadeau & Bengio)" if test_train_ratio is not None else "")
        + f". A model is called best *clear of* the others only where the paired 95% interval of its difference to "
        f"every other model ({unit} by {unit}, the same splits) excludes 0, with at least {MIN_PAIRS} pairs; "
        f"otherwise it is *tied*, or, with fewer pairs, no difference is established.", "",
    ]
    if left_out:
        lines += ["Left out (no completed trials): " + ", ".join(md_code(m) for m in left_out) + ".", ""]
    flat = _flat_models(trials, multi, models)
    if flat:
        lines += ["Did not learn (training accuracy flat over every epoch, in every completed seed; its MCR and MOFR "
                  "are 0 for that reason): " + ", ".join(md_code(m) for m in flat) + ". Left out of the rankings below.", ""]
        models = [m for m in models if m not in flat]
    if not models:
        return "\n".join(lines + ["No model has a completed trial, so there is nothing to recommend.", ""])

    ranker = Ranker(_unit_values(trials, mcr, multi), test_train_ratio)
    stats = {metric: _metric_stats(summary, metric, multi, models)
             for metric in ("initial_acc", "test_acc", "test_macro_f1", "params_trainable", "train_images_per_s",
                            "infer_latency_ms", "infer_images_per_s")}
    for metric, label, higher in CRITERIA:
        lines.append(_line(ranker, label, f"`{metric}`", stats[metric], metric, higher))
    mcr_window, mcr_stats = _rate_stats(mcr, "MCR", True, multi, models)
    mofr_window, mofr_stats = _rate_stats(mcr, "MOFR", False, multi, models)
    lines.append(_line(ranker, "Fastest convergence", f"accuracy-based MCR, epochs {mcr_window or '–'}, higher is faster",
                       mcr_stats, "MCR", True, paired_as=f"MCR:{mcr_window}"))
    lines.append(_line(ranker, "Least overfitting", f"accuracy-based MOFR, epochs {mofr_window or '–'}, lower is less",
                       mofr_stats, "MOFR", False, paired_as=f"MOFR:{mofr_window}"))
    lines.append(_line(ranker, "Fewest trainable parameters", "`params_trainable`", stats["params_trainable"],
                       "params_trainable", False, exact=True))
    for metric, label, what, higher in SPEED_CRITERIA:
        lines.append(_line(ranker, label, what, stats[metric], metric, higher))

    pareto = _pareto(stats[quality], stats["params_trainable"])
    title = f"Pareto-optimal ({QUALITY_NAMES[quality]} vs trainable parameters)"
    if pareto.empty:
        lines.append(f"- **{title}**: not available.")
    else:
        lines.append(f"- **{title}**: " + ", ".join(
            f"{md_code(p.model)} ({p.acc:.3f}, {p.params:,.0f} params)" for p in pareto.itertuples(index=False))
            + f" (no other model has at least its {QUALITY_NAMES[quality]} with as few parameters; means, so a point on the "
              "front need not differ from its neighbours beyond the seed noise).")
    lines += _difference_lines(differences, multi)
    lines += ["", *_decision_rule(ranker, stats, pareto, quality), ""]
    return "\n".join(lines)


def best_model(summary: pd.DataFrame, trials: pd.DataFrame, test_train_ratio: float | None = None,
               metric: str = "test_acc") -> str | None:
    """The model this section names best by ``metric`` (``<backbone>_<init>[_<variant>]``), ranked as its lines
    rank (models without a completed trial, or that did not learn, left out); None when no model qualifies.
    ``summary`` and (enriched) ``trials`` from ``ferbench.reports.comparison.comparison_tables``."""
    multi = _multi_variant(summary)
    models, _ = _completed_models(summary, multi)
    flat = set(_flat_models(trials, multi, models))
    candidates = _metric_stats(summary, metric, multi, [model for model in models if model not in flat])
    ranked = Ranker(_unit_values(trials, None, multi), test_train_ratio).rank(candidates, metric, higher=True)
    return None if ranked is None else str(ranked["best"].model)


def model_of_each_arm(trials: pd.DataFrame, summary: pd.DataFrame) -> pd.Series:
    """Each row's model name as this section writes it (the variant named only when the study has several)."""
    return _names(trials, _multi_variant(summary))


def _flat_models(trials: pd.DataFrame | None, multi_variant: bool, models: list[str]) -> list[str]:
    """Models whose every completed arm did not learn (``did_not_learn`` in the enriched trials)."""
    if trials is None or "did_not_learn" not in trials.columns:
        return []
    done = trials[trials["status"] == "completed"] if "status" in trials.columns else trials
    flags = done.assign(model=_names(done, multi_variant)).groupby("model", sort=False)["did_not_learn"].all()
    return [m for m in models if bool(flags.get(m, False))]


def _decision_rule(ranker: Ranker, stats: dict[str, pd.DataFrame], pareto: pd.DataFrame, quality: str = "test_acc") -> list[str]:
    """Smelyakov et al.'s rule, with our numbers; "accurate" is measured by ``quality``."""
    text = ["**Decision rule (Smelyakov et al.)**", ""]
    name = QUALITY_NAMES[quality]
    accuracy = ranker.rank(stats[quality], quality, higher=True)
    if accuracy is None:
        return text + [f"No model has a {name}, so the rule cannot be applied."]
    contenders = _contenders(accuracy)
    speed = stats["train_images_per_s"]
    speed = speed[speed["model"].isin(contenders)]
    fast = ranker.rank(speed, "train_images_per_s", higher=True)
    within = ", ".join(md_code(m) for m in contenders)
    if fast is None:
        speed_text = f"no throughput recorded for the models not established to be less accurate than the best ({within})"
    else:
        speed_text = (f"{_cell('train_images_per_s', fast['best'], ' images/s')} — highest throughput among the models "
                      f"not established to be less accurate than the best ({within}); "
                      f"{_verdict(fast, 'train_images_per_s', '(the only one with a throughput)')}")
    text.append(f"- If speed matters and data is plentiful: {speed_text}.")
    best_of_pareto = ranker.rank(stats[quality][stats[quality]["model"].isin(pareto["model"])], quality, higher=True)
    if best_of_pareto is None:
        text.append(f"- If quality matters and resources are limited: no Pareto set ({name} and trainable "
                    "parameters are both needed).")
    else:
        params = dict(zip(pareto["model"], pareto["params"]))
        best = best_of_pareto["best"]
        smaller = [o for o in [*best_of_pareto["tied"], *best_of_pareto["open"]] if params[o.model] < params[best.model]]
        note = ""
        if smaller:
            note = ("; the smaller " + ", ".join(f"{md_code(o.model)} ({params[o.model]:,.0f} params)" for o in smaller)
                    + " is not established to be less accurate")
        text.append(f"- If quality matters and resources are limited: {_cell(quality, best)} {METRIC_LABELS[quality]}, "
                    f"{params[best.model]:,.0f} trainable params — best {name} among the Pareto set; "
                    f"{_verdict(best_of_pareto, quality, '(the only model in the Pareto set)')}{note}.")
    return text
