"""Figures of the multi-label (action-unit) task, after Arsirii et al. (2023): per-AU F1 bars per loss
(their Fig. 4 compares BCE with L_pr label by label), precision–recall curves per AU, and the
Data section's label prevalence and co-occurrence (DISFA's imbalance, their Table 1).

Each figure has a pure ``*_data`` function (what is drawn), a ``draw_*`` function returning the
``Figure`` (None when there is nothing to draw) and a ``plot_*`` function writing the PNG, with the
placeholder, style and atomic write of ``ferbench.reports.figures``.

Why the PR curves pool seeds and folds: every arm of a model predicts the same test images (each
fold's test part once per seed), so stacking them gives one curve per model that weighs every arm
alike, where a first seed's curve would hide the seed-to-seed spread and a mean of curves is
undefined (each has its own recall points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ferbench.reports.derived import model_names
from ferbench.reports.figures import _finish, _spread_note, _style, _unit_word

LOSS_AXIS = "train.loss"  # the grid axis the paper's Fig. 4 compares
MEAN = "mean"  # the bar group after the labels: the average F1 over labels (the paper's headline)


def _palette(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per name in the given order: seaborn "colorblind", "husl" beyond its 10 colours."""
    return dict(zip(names, sns.color_palette("colorblind" if len(names) <= 10 else "husl", max(len(names), 1))))


def _legend_columns(width: float, labels: list[str]) -> int:
    """As many legend columns as fit a figure ``width`` inches wide (about 11 legend characters per inch),
    so long model names wrap onto rows instead of running off the figure."""
    widest = max((len(label) for label in labels), default=1) + 5  # the handle and the gap
    return max(1, min(len(labels), int(11 * width) // widest))


# --------------------------------------------------------------------------- per-AU F1 bars (Fig. 4)


def f1_bar_data(per_au: pd.DataFrame) -> pd.DataFrame:
    """Per ``panel``, ``bar`` and ``au`` (the labels, then ``mean``: each arm's average F1 over labels): ``n``
    arms with a value, their ``mean``, ``low`` (min) and ``high`` (max) test F1 across seeds and folds.

    With a ``train.loss`` axis a panel is a model without its loss and its bars are the losses, so one
    panel is the paper's Fig. 4 comparison; without one there is a single panel ("") with a bar per model."""
    columns = ["panel", "bar", "au", "n", "mean", "low", "high"]
    if per_au.empty:
        return pd.DataFrame(columns=columns)
    frame = per_au.assign(f1=pd.to_numeric(per_au["f1"], errors="coerce"))
    if LOSS_AXIS in frame.columns:
        frame = frame.assign(panel=model_names(frame.drop(columns=LOSS_AXIS)), bar=frame[LOSS_AXIS].astype(str))
    else:
        frame = frame.assign(panel="", bar=model_names(frame))
    averages = frame.groupby(["panel", "bar", "arm_id"], sort=False)["f1"].mean().reset_index().assign(au=MEAN)
    long = pd.concat([frame[["panel", "bar", "arm_id", "au", "f1"]], averages], ignore_index=True)
    stats = long.groupby(["panel", "bar", "au"], sort=False)["f1"].agg(n="count", mean="mean", low="min", high="max")
    return stats.reset_index()[columns]


def draw_au_f1_bars(per_au: pd.DataFrame) -> Figure | None:
    """One panel per model without its loss (one panel when the study has no loss axis): for each AU and
    for the mean over AUs, a bar per loss (per model), min–max error bars across seeds, the mean's values
    written on its bars. Each bar's ``gid`` is ``panel|bar|au``."""
    data = f1_bar_data(per_au)
    if data.empty or data["mean"].notna().sum() == 0:
        return None
    panels, bars, labels = (list(dict.fromkeys(data[c])) for c in ("panel", "bar", "au"))
    by_loss = LOSS_AXIS in per_au.columns
    palette = _palette(bars)
    width, n_max = 0.8 / len(bars), int(data["n"].max())
    with _style():
        figure = Figure(figsize=(min(18.0, max(8.0, 1.2 + 0.22 * len(labels) * max(3, len(bars)))), 1.4 + 3.0 * len(panels)),
                        layout="constrained")
        axes = figure.subplots(len(panels), 1, squeeze=False, sharey=True)[:, 0]
        for ax, panel in zip(axes, panels):
            for k, bar in enumerate(bars):
                values = data[(data["panel"] == panel) & (data["bar"] == bar)].set_index("au").reindex(labels)
                if values["n"].isna().all():  # this model was not trained with this loss
                    continue
                xs = np.arange(len(labels)) + (k - (len(bars) - 1) / 2) * width
                container = ax.bar(xs, values["mean"].fillna(0), width * 0.95, color=palette[bar], edgecolor="0.2", lw=0.5)
                for patch, label in zip(container, labels):
                    patch.set_gid(f"{panel}|{bar}|{label}")
                spread = values["n"].fillna(0) > 1
                if spread.any():
                    ax.errorbar(xs[spread], values["mean"][spread], yerr=[values["mean"][spread] - values["low"][spread],
                                values["high"][spread] - values["mean"][spread]], fmt="none", color="0.1", capsize=2, lw=0.8)
                mean, top = values["mean"].iloc[-1], values["high"].iloc[-1]
                if np.isfinite(mean):  # the mean over AUs, written on its bar
                    ax.text(xs[-1], top + 0.02, f"{mean:.2f}", ha="center", va="bottom", fontsize=7,
                            rotation=90 if len(bars) > 3 else 0)
            ax.axvline(len(labels) - 1.5, color="0.5", ls=":", lw=1)  # the labels | their mean
            ax.set_xticks(range(len(labels)), [*labels[:-1], "mean\nover AUs"])
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_ylim(0, 1.12)
            ax.set(ylabel="test F1", title=panel if by_loss else "")
            ax.grid(axis="x", visible=False)
        handles = [Patch(facecolor=palette[bar], edgecolor="0.2", label=bar) for bar in bars]
        if n_max > 1:
            handles.append(Line2D([], [], color="0.1", marker="|", ms=10, lw=1,
                                  label=f"error bar: min–max over {_unit_word(per_au)}"))
        figure.legend(handles=handles, loc="outside lower center", frameon=False, title="loss" if by_loss else "model",
                      ncols=_legend_columns(figure.get_figwidth(), [h.get_label() for h in handles]))
        what = "per loss" if by_loss else "per model"
        figure.suptitle(f"Test F1 per action unit, {what}\n({_spread_note(n_max, _unit_word(per_au), 'error bars = min–max')})")
    return figure


def plot_au_f1_bars(per_au: pd.DataFrame, path: Path) -> Path:
    """Write ``draw_au_f1_bars`` as a PNG at ``path`` (placeholder when no arm has test scores)."""
    return _finish(draw_au_f1_bars(per_au), path, "Test F1 per action unit", "no completed trial with test results")


# --------------------------------------------------------------------------- precision-recall curves per AU


@dataclass(frozen=True)
class LabelCurve:
    """One model's precision–recall curve of one label, seeds and folds pooled (empty when the label has no
    positive test image); ``operating_point`` (recall, precision) of the decisions at each arm's own thresholds."""

    model: str
    label: str
    recall: np.ndarray
    precision: np.ndarray
    average_precision: float
    prevalence: float
    operating_point: tuple[float, float]


def pr_curve_data(predictions: dict[str, dict[str, np.ndarray]], models: dict[str, str], labels: list[str]) -> list[LabelCurve]:
    """The curves drawn: per model (``models``: arm_id → model) and label, from each arm's test ``probabilities``,
    0/1 ``targets`` and ``thresholds`` (``test_predictions.npz``), the arms of a model stacked. A label is
    decided positive at ``probability >= threshold``; a label beyond ``labels`` (its scores unread) is ``label <k>``."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    stacked: dict[str, list[dict[str, np.ndarray]]] = {}
    for arm_id, arrays in predictions.items():
        stacked.setdefault(models[arm_id], []).append(arrays)
    curves = []
    for model, arms in stacked.items():
        scores = np.concatenate([arm["probabilities"] for arm in arms]).astype(float)
        truth = np.concatenate([arm["targets"] for arm in arms]).astype(bool)
        decided = np.concatenate([arm["probabilities"] >= arm["thresholds"][None, :] for arm in arms])
        names = [*labels, *(f"label {k + 1}" for k in range(len(labels), scores.shape[1]))][:scores.shape[1]]
        for k, label in enumerate(names):
            y, p, d = truth[:, k], scores[:, k], decided[:, k]
            hits = float((y & d).sum())
            point = (hits / y.sum() if y.any() else np.nan, hits / d.sum() if d.any() else np.nan)
            if y.any():
                precision, recall, _ = precision_recall_curve(y, p)
                curves.append(LabelCurve(model, label, recall, precision, float(average_precision_score(y, p)),
                                         float(y.mean()), point))
            else:
                curves.append(LabelCurve(model, label, np.zeros(0), np.zeros(0), np.nan, 0.0, point))
    return curves


def draw_pr_curves(predictions: dict[str, dict[str, np.ndarray]], models: dict[str, str], labels: list[str]) -> Figure | None:
    """One panel per label, one line per model (colour) with its operating point (dot) and the label's
    prevalence (dashed: a classifier guessing at random); each panel's legend gives each model's average
    precision. Each line's ``gid`` is ``model|label``."""
    curves = pr_curve_data(predictions, models, labels)
    if not curves:
        return None
    names = list(dict.fromkeys(curve.model for curve in curves))
    shown = list(dict.fromkeys(curve.label for curve in curves))
    palette = _palette(names)
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    with _style():
        figure = Figure(figsize=(3.6 * columns, 1.2 + 3.3 * rows), layout="constrained")
        axes = np.atleast_1d(figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
        for ax, label in zip(axes, shown):
            entries = []
            for curve in (c for c in curves if c.label == label):
                if not len(curve.recall):
                    continue
                line, = ax.plot(curve.recall, curve.precision, color=palette[curve.model], lw=1.4, drawstyle="steps-post",
                                gid=f"{curve.model}|{label}")
                ax.plot(*curve.operating_point, "o", color=palette[curve.model], ms=5, mec="0.1", mew=0.6)
                entries.append((line, f"AP {curve.average_precision:.2f}"))
            prevalence = next(c.prevalence for c in curves if c.label == label)
            if entries:
                ax.axhline(prevalence, color="0.45", ls="--", lw=1)
                ax.legend(*zip(*entries), fontsize=7, loc="lower left", frameon=True, handlelength=1.2)
            else:
                ax.text(0.5, 0.5, "no positive test image", ha="center", va="center", fontsize=9, transform=ax.transAxes)
            ax.set_title(f"{label} (prevalence {prevalence:.1%})", fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
        for ax in axes[len(shown):]:
            ax.set_visible(False)
        for ax in axes[:len(shown)]:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        handles = [Line2D([], [], color=palette[name], lw=2, label=name) for name in names]
        handles += [Line2D([], [], ls="none", marker="o", color="0.5", mec="0.1", label="operating point (the arms' thresholds)"),
                    Line2D([], [], color="0.45", ls="--", label="prevalence (random guessing)")]
        figure.legend(handles=handles, loc="outside lower center", frameon=False,
                      ncols=_legend_columns(figure.get_figwidth(), [h.get_label() for h in handles]))
        figure.suptitle("Precision–recall per action unit on the test split\n(each model's seeds and folds pooled)")
    return figure


def plot_pr_curves(predictions: dict[str, dict[str, np.ndarray]], models: dict[str, str], labels: list[str], path: Path) -> Path:
    """Write ``draw_pr_curves`` as a PNG at ``path`` (placeholder when no arm has test predictions)."""
    return _finish(draw_pr_curves(predictions, models, labels), path, "Precision–recall per action unit",
                   "no completed trial with test predictions")


# --------------------------------------------------------------------------- the Data section: prevalence, co-occurrence


def prevalence_data(stats: dict) -> pd.DataFrame:
    """Per label (rows, ``stats["names"]``) and part of the data (columns: ``all``, then each split part): the
    share of the part's images on which the label is active. ``stats``: the experiment's recorded label
    statistics (``names``, ``images`` and ``positives`` per part, ``co_occurrence``)."""
    images = pd.Series(stats["images"], dtype=float)
    positives = pd.DataFrame(stats["positives"], index=stats["names"], dtype=float)
    return positives / images.where(images > 0)[positives.columns]


def conditional_co_occurrence(stats: dict) -> pd.DataFrame:
    """P(column label active | row label active) over all images: each row of the co-occurrence counts over
    its diagonal (the row label's positives); a label without positives has a row of NaN."""
    counts = np.asarray(stats["co_occurrence"], dtype=float)
    diagonal = np.diag(counts)[:, None]
    shares = np.divide(counts, diagonal, out=np.full_like(counts, np.nan), where=diagonal > 0)
    return pd.DataFrame(shares, index=stats["names"], columns=stats["names"])


def draw_label_statistics(stats: dict) -> Figure | None:
    """Left: the share of images with each label active, a bar per part of the data; right: the
    co-occurrence counts, coloured by P(column | row)."""
    if not stats["names"]:
        return None
    prevalence = prevalence_data(stats)
    counts = pd.DataFrame(stats["co_occurrence"], index=stats["names"], columns=stats["names"])
    size = len(stats["names"])
    with _style():
        figure = Figure(figsize=(6 + 0.9 * size + 0.25 * size * len(prevalence.columns), 1.8 + 0.5 * size), layout="constrained")
        left, right = figure.subplots(1, 2, width_ratios=[1.2 + 0.12 * len(prevalence.columns), 1])
        long = (100 * prevalence).rename_axis("label").reset_index().melt(id_vars="label", var_name="part", value_name="share")
        sns.barplot(data=long, x="label", y="share", hue="part", ax=left, palette="colorblind")
        left.set(title="Images with the label active", xlabel="label", ylabel="% of the part's images")
        if len(prevalence.columns) == 1 and left.get_legend() is not None:
            left.get_legend().remove()
        sns.heatmap(conditional_co_occurrence(stats), ax=right, vmin=0, vmax=1, cmap="Blues", annot=counts.to_numpy(), fmt="d",
                    annot_kws={"size": 7}, square=True, cbar_kws={"shrink": 0.8, "label": "P(column | row)"})
        right.set(title="Co-occurrence (images with both active)", xlabel="", ylabel="")
        right.tick_params(axis="y", rotation=0)
        figure.suptitle("Label prevalence and co-occurrence")
    return figure


def plot_label_statistics(stats: dict, path: Path) -> Path:
    """Write ``draw_label_statistics`` as a PNG at ``path`` (placeholder when the dataset has no labels)."""
    return _finish(draw_label_statistics(stats), path, "Label prevalence and co-occurrence", "no labels recorded")
