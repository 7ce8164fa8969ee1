"""Metrics derived from the tidy tables of ``ferbench.reports.collect``: the Smelyakov et al. (2022)
convergence / overfitting rates per epoch window, initial (epoch-1) metrics, and statistics across
seeds (t intervals and paired differences from ``ferbench.reports.stats``) so that a report can say whether a difference
between arms is larger than the seed-to-seed noise.

All functions are pure: DataFrames in, DataFrames out, nothing read or written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ferbench.harness.spec import SplitSpec, axis_sections, settings_label
from ferbench.reports.stats import PairedDifference, compare_paired, t_interval

ARM_KEYS = ["backbone", "init", "variant", "seed"]  # + "fold" in k-fold studies
GROUP_KEYS = ["backbone", "init", "variant"]  # an arm group: seeds and folds pooled
RATE_METRICS = {"accuracy": ("train_acc", "val_acc"), "loss": ("train_loss", "val_loss")}
RATE_KINDS = ("MCR", "MOFR")
# Columns that can read back from CSV as numbers (an all-empty text column is float NaN) but are
# identifiers, settings or text, not metrics to average.
NOT_METRICS = {"trial_id", "arm_id", "seed", "fold", "weights_source", "status", "error", "damaged", "epochs_done",
               "input_size", "resumed_at_epochs"}
INIT_ORDER = ("pretrained", "random")
WINDOW_LABEL = re.compile(r"(\d+)-(\d+)")  # an epoch window "a-b" (``window_label``, ``parse_window``)
DIFFERENCE_COLUMNS = ["comparison", "backbone", "variant", "init", "metric", "n_pairs", "n_unpaired", "mean_diff",
                      "ci_low", "ci_high", "p_value", "p_sign_flip", "method", "claim", "note"]  # the paper lists the pretrained arm first


def axis_keys(frame: pd.DataFrame) -> list[str]:
    """The study's extra grid axes among ``frame``'s columns: dotted setting paths such as ``train.lr``
    (``ferbench.reports.collect.arm_columns``). They belong to an arm's identity like its variant: an arm
    group (seeds pooled) and a pair (pretrained vs random, variant vs baseline) hold them fixed."""
    sections = set(axis_sections())
    return [c for c in frame.columns if isinstance(c, str) and "." in c and c.split(".")[0] in sections]


def group_keys(frame: pd.DataFrame) -> list[str]:
    """What makes an arm group (a model, its seeds and folds pooled): ``GROUP_KEYS`` and the extra axes."""
    return GROUP_KEYS + axis_keys(frame)


def settings_labels(frame: pd.DataFrame) -> pd.Series:
    """Per row, its extra-axis values as arm names write them (``lr1e-04``; "" without extra axes)."""
    axes = axis_keys(frame)
    if not axes:
        return pd.Series("", index=frame.index, dtype=object)
    return pd.Series([settings_label(dict(zip(axes, values))) for values in frame[axes].itertuples(index=False, name=None)],
                     index=frame.index, dtype=object)


def with_settings(names: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """``names`` (per row of ``frame``) with the row's extra-axis values appended, as in its arm's id."""
    labels = settings_labels(frame)
    return names.astype(str).where(labels == "", names.astype(str) + "_" + labels)


def model_names(frame: pd.DataFrame, variant: bool = True) -> pd.Series:
    """A model per row, the arm without its seed: ``<backbone>_<init>[_<variant>][_<settings>]``."""
    names = frame["backbone"].astype(str) + "_" + frame["init"].astype(str)
    if variant:
        names = names + "_" + frame["variant"].astype(str)
    return with_settings(names, frame)


def settings_in_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each row's extra-axis values appended to its ``variant`` (``baseline_lr1e-04``), for the
    figures, which tell models apart by backbone, init and variant."""
    if not axis_keys(frame) or "variant" not in frame.columns:
        return frame
    return frame.assign(variant=with_settings(frame["variant"], frame))


def _arm_keys(frame: pd.DataFrame) -> list[str]:
    return ARM_KEYS + axis_keys(frame) + (["fold"] if "fold" in frame.columns else [])


def _unit_keys(frame: pd.DataFrame) -> list[str]:
    """What pairs two arms of one group: the seed, and the fold in k-fold studies."""
    return ["seed"] + (["fold"] if "fold" in frame.columns else [])


# --------------------------------------------------------------------------- MCR / MOFR


def epoch_windows(last_epoch: int, window: int = 5) -> list[tuple[int, int]]:
    """Windows (a, b) covering epochs 1..last_epoch in steps of ``window``; the last may be shorter."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return [(a, min(a + window - 1, last_epoch)) for a in range(1, last_epoch + 1, window)]


def window_label(first: int, last: int) -> str:
    """The label of the epoch window first..last in every table, figure and text: ``"1-5"``."""
    return f"{first}-{last}"


def parse_window(label: object) -> tuple[int, int]:
    """(first, last) epoch of a window label (``window_label``), the one reader of them: a label read
    back from a CSV or Parquet table is the same text."""
    match = WINDOW_LABEL.fullmatch(str(label).strip())
    if match is None:
        raise ValueError(f"not an epoch window label such as '1-5': {label!r}")
    return int(match[1]), int(match[2])


def window_order(labels: Iterable) -> list:
    """The distinct window labels of ``labels`` in epoch order ("1-5", "6-10", "11-12"; not as text sorts them)."""
    return sorted(dict.fromkeys(labels), key=parse_window)


def _curves(epochs: pd.DataFrame, column: str, arms: pd.Index, last_epoch: int) -> np.ndarray:
    """arms × epochs 0..last_epoch matrix of ``column``; a missing epoch or value is NaN."""
    wide = epochs.pivot(index="arm_id", columns="epoch", values=column)
    return wide.reindex(index=arms, columns=range(last_epoch + 1)).to_numpy(dtype=float)


def _window_means(quantity: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    """arms × windows: mean of the epoch-to-epoch differences of ``quantity`` over each window.

    ``np.mean`` propagates NaN on purpose: a window is defined only when every difference in it
    is, i.e. when M_{a-1}, ..., M_b are all recorded (see ``mcr_mofr``).
    """
    steps = np.diff(quantity, axis=1)  # column e-1 holds M_e - M_{e-1}
    return np.stack([steps[:, a - 1 : b].mean(axis=1) for a, b in windows], axis=1)


def mcr_mofr(epochs: pd.DataFrame, window: int = 5, last_epoch: int | None = None) -> pd.DataFrame:
    """Mean convergence rate (MCR) and mean overfitting rate (MOFR) per arm and epoch window, for
    accuracy and loss, in the long schema of ``tables/mcr_mofr.csv`` (DESIGN.md):
    backbone, init, variant, seed, [fold], arm_id, metric, kind, window ("1-5"), value.

    MCR(a..b) = mean over e = a..b of M_e - M_{e-1} on the train metric; MOFR the same on
    G_e = M_e^train - M_e^val. Windows are shared by all arms (1-5, 6-10, ... up to ``last_epoch``,
    default the largest epoch in the table; the last window may be shorter), so the tables line up.

    Missing-epoch rule: a window's value is NaN unless every epoch a-1..b of the arm is recorded
    with a finite value (for MOFR: train and val). A gap, a missing epoch 0, or an arm stopped early
    therefore gives NaN for the windows it touches, never a value from a shorter or interpolated
    window. Every arm in ``epochs`` gets a row for every window (arms with only epoch 0 get NaN);
    an empty table gives an empty frame with the schema's columns.
    """
    keys = _arm_keys(epochs)
    columns = [*keys, "arm_id", "metric", "kind", "window", "value"]
    trained = epochs["epoch"].max() if len(epochs) else 0
    last_epoch = int(trained) if last_epoch is None else last_epoch
    if epochs.empty or last_epoch < 1:
        return pd.DataFrame(columns=columns)
    epochs = epochs.drop_duplicates(["arm_id", "epoch"], keep="last")  # a replayed epoch: the last wins
    arms = epochs.drop_duplicates("arm_id")[[*keys, "arm_id"]].reset_index(drop=True)
    windows = epoch_windows(last_epoch, window)
    labels = [window_label(a, b) for a, b in windows]
    blocks = []
    for metric, (train_col, val_col) in RATE_METRICS.items():
        train = _curves(epochs, train_col, pd.Index(arms["arm_id"]), last_epoch)
        val = _curves(epochs, val_col, pd.Index(arms["arm_id"]), last_epoch)
        for kind, quantity in (("MCR", train), ("MOFR", train - val)):
            values = pd.DataFrame(_window_means(quantity, windows), columns=labels)
            block = pd.concat([arms, values], axis=1).melt(id_vars=[*keys, "arm_id"], var_name="window", value_name="value")
            blocks.append(block.assign(metric=metric, kind=kind))
    return pd.concat(blocks, ignore_index=True)[columns]


# --------------------------------------------------------------------------- initial metrics


def initial_metrics(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the metrics after the first epoch of training, and the best validation accuracy.

    ``initial_acc`` / ``initial_loss`` are **validation** values at epoch 1: Smelyakov et al. rank
    models "in terms of initial and final accuracy on the validation set", the reading of their
    Figs 9-10. The training-set values (running averages over epoch 1) are kept beside them as
    ``initial_train_acc`` / ``initial_train_loss``. ``best_val_acc`` / ``best_epoch`` range over
    all recorded epochs, epoch 0 included (as in ``trials.csv``); ties go to the earliest epoch.
    Columns: backbone, init, variant, seed, [fold], arm_id, initial_acc, initial_loss,
    initial_train_acc, initial_train_loss, best_val_acc, best_epoch (NaN / <NA> when undefined).
    """
    keys = [*_arm_keys(epochs), "arm_id"]
    epochs = epochs.drop_duplicates(["arm_id", "epoch"], keep="last").reset_index(drop=True)  # idxmax needs unique labels
    arms = epochs.drop_duplicates("arm_id")[keys]
    first = epochs.loc[epochs["epoch"] == 1, ["arm_id", "val_acc", "val_loss", "train_acc", "train_loss"]].rename(
        columns={"val_acc": "initial_acc", "val_loss": "initial_loss",
                 "train_acc": "initial_train_acc", "train_loss": "initial_train_loss"}
    )
    scored = epochs.dropna(subset=["val_acc"]).sort_values(["arm_id", "epoch"])
    best = scored.loc[scored.groupby("arm_id")["val_acc"].idxmax(), ["arm_id", "val_acc", "epoch"]]
    best = best.rename(columns={"val_acc": "best_val_acc", "epoch": "best_epoch"})
    result = arms.merge(first, on="arm_id", how="left").merge(best, on="arm_id", how="left")
    result["best_epoch"] = result["best_epoch"].astype("Int64")
    return result.reset_index(drop=True)


# --------------------------------------------------------------------------- Smelyakov Tables 2-5


def _model_order(groups: pd.DataFrame) -> pd.DataFrame:
    """Backbones and variants in order of first appearance, pretrained before random (as in the paper)."""
    rank = {name: i for i, name in enumerate(INIT_ORDER)}
    ordered = groups.assign(
        _b=pd.factorize(groups["backbone"])[0],
        _i=groups["init"].map(lambda init: rank.get(init, len(rank))),
        _v=pd.factorize(groups["variant"])[0],
    )
    return ordered.sort_values(["_b", "_i", "init", "_v"], kind="stable").drop(columns=["_b", "_i", "_v"])


def smelyakov_tables(mcr: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's Tables 2-5 ("accuracy-based MCR", "loss-based MCR", "accuracy-based MOFR",
    "loss-based MOFR") from ``mcr_mofr``'s output: one row per model ``<backbone>_<init>``
    (``_<variant>`` appended when the study has more than one variant, and the values of extra grid
    axes as the arm ids write them, ``_lr1e-04``), one column per epoch
    window in epoch order, values the mean over seeds and folds (NaN seeds skipped; NaN when no
    seed has a value). Rows: backbones and variants in order of appearance, pretrained first."""
    keys = group_keys(mcr)
    models = _model_order(mcr[keys].drop_duplicates())
    names = model_names(models, variant=mcr["variant"].nunique() > 1)
    rows = pd.MultiIndex.from_frame(models)
    windows = window_order(mcr["window"].unique())
    means = mcr.groupby([*keys, "metric", "kind", "window"])["value"].mean().unstack("window")
    tables = {}
    for kind in RATE_KINDS:
        for metric in RATE_METRICS:
            selected = means[(means.index.get_level_values("metric") == metric) & (means.index.get_level_values("kind") == kind)]
            table = selected.droplevel(["metric", "kind"]).reindex(index=rows, columns=windows)
            table.index = pd.Index(names.tolist(), name="model")
            table.columns = pd.Index(windows, name="window")
            tables[f"{metric}-based {kind}"] = table.astype(float)
    return tables


# --------------------------------------------------------------------------- statistics across seeds


def completed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "completed"] if "status" in trials.columns else trials


def default_metrics(trials: pd.DataFrame) -> list[str]:
    """Numeric trial-level columns worth summarising (identifiers and settings left out)."""
    numeric = trials.select_dtypes(include="number").columns
    return [c for c in numeric if c not in NOT_METRICS and c not in axis_keys(trials)]


def seed_summary(trials: pd.DataFrame, metrics: list[str] | None = None, test_train_ratio: float | None = None) -> pd.DataFrame:
    """Mean / std / 95% t interval across seeds (and folds) per arm group, for ``summary.csv``.

    Long format, one row per (backbone, init, variant, [extra axes], metric): columns backbone, init, variant,
    the extra grid axes (``train.lr``, …), metric, n, mean, std, ci95_low, ci95_high. Long because n differs per metric (a NaN metric is
    not counted) and the column set stays fixed whatever metrics a study has. Only completed trials
    count; a group with none still appears, with n = 0. std uses ddof=1; with n < 2 std and the
    interval are NaN. In a k-fold study (``test_train_ratio`` given) the interval is the corrected
    resampled one: folds share training data, so the plain t interval would be too narrow.
    """
    metrics = default_metrics(trials) if metrics is None else metrics
    keys = group_keys(trials)
    groups = trials[keys].drop_duplicates()
    done = completed_trials(trials)
    values = done[keys + metrics].melt(id_vars=keys, var_name="metric", value_name="value")
    values["value"] = pd.to_numeric(values["value"], errors="coerce").astype(float)
    summary = values.groupby([*keys, "metric"], sort=False)["value"].agg(n="count", mean="mean", std="std")
    everything = groups.merge(pd.DataFrame({"metric": pd.Series(metrics, dtype=values["metric"].dtype)}), how="cross")
    summary = everything.merge(summary.reset_index(), on=[*keys, "metric"], how="left")
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary.loc[summary["n"] < 2, "std"] = np.nan
    summary["ci95_low"], summary["ci95_high"] = t_interval(summary["mean"], summary["std"], summary["n"],
                                                           test_train_ratio=test_train_ratio)
    return summary.reset_index(drop=True)


def unit_pairs(frame: pd.DataFrame, units: list[str], side_a: pd.Series, side_b: pd.Series,
               column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(a values, b values, unpaired count): ``column`` of the rows selected by ``side_a`` and
    ``side_b``, matched on ``units`` (seed, and fold); units present on one side only are left out."""
    sides = [frame.loc[side, [*units, column]].dropna(subset=[column]) for side in (side_a, side_b)]
    both = sides[0].merge(sides[1], on=units, how="outer", suffixes=("_a", "_b"), indicator=True)
    paired = both[both["_merge"] == "both"]
    return (paired[f"{column}_a"].to_numpy(dtype=float), paired[f"{column}_b"].to_numpy(dtype=float),
            int((both["_merge"] != "both").sum()))


def difference_row(a: np.ndarray, b: np.ndarray, test_train_ratio: float | None) -> dict:
    """The ``differences`` columns of one comparison (see ``ferbench.reports.stats.compare_paired``)."""
    return difference_fields(compare_paired(a, b, test_train_ratio))


def difference_fields(d: PairedDifference) -> dict:
    """A paired difference as the ``differences`` table's columns."""
    return {"n_pairs": d.n, "mean_diff": d.mean_diff, "ci_low": d.ci_low, "ci_high": d.ci_high, "p_value": d.p_value,
            "p_sign_flip": d.p_sign_flip, "method": d.method, "claim": d.claim, "note": d.note}


def _pairs(trials: pd.DataFrame, factor: str, treated: str, reference: str, metric: str,
           test_train_ratio: float | None) -> list[dict]:
    """One row per backbone × level of the other factor × values of the extra axes: ``treated`` -
    ``reference`` of ``factor``, paired by seed (and fold). Everything but ``factor`` is held fixed: a
    pretrained arm at lr 1e-4 pairs with the random arm at lr 1e-4, never with one at another lr."""
    units = _unit_keys(trials)
    held = next(k for k in ("init", "variant") if k != factor)  # the other factor, held fixed
    keys = ["backbone", held, *axis_keys(trials)]
    rows = []
    for values, arms in trials.groupby(keys, sort=False, dropna=False):
        if not {treated, reference} <= set(arms[factor]):  # the grid never forms this pair (an excluded arm)
            continue
        cell = completed_trials(arms)
        a, b, unpaired = unit_pairs(cell, units, cell[factor] == treated, cell[factor] == reference, metric)
        rows.append({"comparison": f"{treated} − {reference}", **dict(zip(keys, values)), factor: np.nan,
                     "n_unpaired": unpaired, **difference_row(a, b, test_train_ratio)})
    return rows


def paired_differences(trials: pd.DataFrame, metric: str = "test_acc", test_train_ratio: float | None = None) -> pd.DataFrame:
    """Does pretraining (or a variant) help beyond seed noise? Paired differences of ``metric``:
    "pretrained − random" per backbone × variant, and "<variant> − baseline" per backbone × init,
    each within the same values of the extra grid axes, pairing completed trials by seed (and fold).
    Columns: comparison, backbone, variant, init, the extra axes (``train.lr``, …), metric, n_pairs,
    n_unpaired, mean_diff, ci_low, ci_high, p_value, p_sign_flip, method, claim, note.

    The compared factor's column is NaN (its levels are in ``comparison``). ``n_unpaired`` counts
    seeds (folds) present on only one side — failed, missing or NaN partners — which are left out.
    The interval is ``ferbench.reports.stats``' paired Student t (the corrected resampled t over folds when
    ``test_train_ratio`` is given); ``claim`` needs 3 pairs and an interval clear of 0.
    A comparison appears only where the grid has an arm on both sides (any status: a failed side is
    counted in ``n_unpaired``), so arms left out by ``grid.exclude`` form no empty rows.
    """
    rows = []
    if {"pretrained", "random"} <= set(trials["init"]):
        rows += _pairs(trials, "init", "pretrained", "random", metric, test_train_ratio)
    variants = list(dict.fromkeys(trials["variant"]))
    if "baseline" in variants:
        for variant in (v for v in variants if v != "baseline"):
            rows += _pairs(trials, "variant", variant, "baseline", metric, test_train_ratio)
    columns = [*DIFFERENCE_COLUMNS[:4], *axis_keys(trials), *DIFFERENCE_COLUMNS[4:]]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).assign(metric=metric)[columns]


def fold_test_train_ratio(split: SplitSpec) -> float | None:
    """n_test / n_train of a k-fold split (1/(k − 1)): the corrected resampled t's term.
    None for a single fixed split, where seeds are the independent units."""
    return 1 / (split.k - 1) if split.kfold else None


def pareto_optimal(points: pd.DataFrame, objectives: dict[str, bool]) -> pd.DataFrame:
    """The rows of ``points`` on the Pareto front of ``objectives`` (column → True where higher is
    better, False where lower is): those no other row dominates, i.e. is at least as good on every
    objective and strictly better on one. Equal points all stay; a row without a finite value in
    every objective is left out (it neither dominates nor is ranked). Rows keep their order.

    The one Pareto rule of the report: the Recommendation's Pareto set and the accuracy-vs-cost figures."""
    values = np.column_stack([pd.to_numeric(points[column], errors="coerce").to_numpy(dtype=float) * (1.0 if higher else -1.0)
                              for column, higher in objectives.items()]) if len(points) else np.empty((0, len(objectives)))
    finite = np.isfinite(values).all(axis=1)
    candidates = values[finite]
    no_worse = (candidates[None, :, :] >= candidates[:, None, :]).all(axis=2)  # [i, j]: j at least as good as i
    better = (candidates[None, :, :] > candidates[:, None, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=1)
    keep = np.zeros(len(points), dtype=bool)
    keep[np.flatnonzero(finite)[~dominated]] = True
    return points[keep]


def did_not_learn(epochs: pd.DataFrame, tolerance: float = 1e-6) -> pd.Series:
    """Per arm_id: True when the training accuracy never moved over epochs 1..last (a flat curve,
    like the paper's ``vggfase_random`` row of zeros). Such an arm's MCR and MOFR are 0, not a
    virtue: the report names it and ranks nothing on it."""
    trained = epochs[epochs["epoch"] >= 1].dropna(subset=["train_acc"])
    spread = trained.groupby("arm_id")["train_acc"].agg(lambda v: v.max() - v.min() if len(v) >= 2 else np.nan)
    return spread.le(tolerance) & spread.notna()
