"""The report's comparison figures (Smelyakov et al. 2022, Figs 5-10, Tables 2-5 as heatmaps, and
accuracy vs cost), as PNGs readable at a glance.

Each figure has a pure ``*_data`` / ``pareto_front`` function computing what is drawn, a ``draw_*``
function returning the matplotlib ``Figure`` (or None when there is nothing to draw) so tests can
read the drawn artists back, and a ``plot_*(data, path) -> Path`` function writing the PNG
atomically. Placeholder rule: when there is nothing to draw (empty table, no finite value), ``plot_*``
writes a small PNG saying "no data" and why, and still returns ``path``, so a report's image link
never breaks.

Conventions shared by all figures: one colour per backbone (``backbone_palette``, seaborn
"colorblind" in sorted-name order); pretrained drawn solid / full colour, random dashed / light and
hatched; rows and bars in sorted backbone order (baseline variant first), pretrained first. Spread
across seeds (and folds): curves and initial bars show **min-max** (few seeds: the actual range); the
accuracy-vs-cost plot shows **±1 SD** (the ``test_acc_std`` it is given). Figures are drawn on
``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state, nothing left open).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.reports.derived import pareto_optimal, window_order

DPI = 120
GROUP_KEYS = ["backbone", "init", "variant"]
INIT_ORDER = ("pretrained", "random")
CURVE_COLUMNS = {"train_acc": ("accuracy", "train"), "val_acc": ("accuracy", "val"),
                 "train_loss": ("loss", "train"), "val_loss": ("loss", "val")}
METRIC_LABEL = {"accuracy": "accuracy", "loss": "loss (cross-entropy)"}
INIT_STYLE = {"pretrained": "-", "random": "--"}  # the paper: pretrained straight, random dashed
INIT_MARKER = {"pretrained": "o", "random": "s"}
COSTS = {"params_trainable": ("trainable parameters (log scale)", "min"),
         "train_images_per_s": ("training throughput (images/s)", "max")}


# --------------------------------------------------------------------------- shared helpers


def backbone_palette(backbones: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per backbone, the same in every figure: seaborn "colorblind" in sorted-name order
    (it cycles after 10 backbones)."""
    names = sorted({str(b) for b in backbones})
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def _light(color, amount: float = 0.5) -> tuple[float, ...]:
    """``color`` mixed with white: the train curves and the random-init bars."""
    return tuple(c + (1 - c) * amount for c in matplotlib.colors.to_rgb(color))


@contextmanager
def _style():
    with matplotlib.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                                "axes.titleweight": "bold", "figure.titlesize": 13}):
        yield


def _units(frame: pd.DataFrame) -> list[str]:
    """What repeats an arm: the seed, and the fold in k-fold studies."""
    return [k for k in ("seed", "fold") if k in frame.columns]


def _unit_word(frame: pd.DataFrame) -> str:
    return "seeds × folds" if "fold" in frame.columns and frame["fold"].nunique() > 1 else "seeds"


def _order(groups: pd.DataFrame) -> pd.DataFrame:
    """Backbones sorted by name, then variants (baseline first, the rest by name), pretrained before random."""
    rank = {name: i for i, name in enumerate(INIT_ORDER)}
    keyed = groups.assign(_i=groups["init"].map(lambda i: rank.get(i, len(rank))), _v=groups["variant"] != "baseline")
    return keyed.sort_values(["backbone", "_v", "variant", "_i", "init"], kind="stable").drop(columns=["_i", "_v"])


def _spread_note(n_max: int, unit: str, spread: str) -> str:
    return f"mean over {n_max} {unit}, {spread} across {unit}" if n_max > 1 else "one seed per arm"


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    with _style():
        figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def placeholder(path: Path, title: str, reason: str) -> Path:
    """The small "no data" PNG written instead of an empty figure."""
    with _style():
        figure = Figure(figsize=(6, 2.2))
        axes = figure.add_subplot()
        axes.axis("off")
        axes.text(0.5, 0.5, f"{title}\n\nno data: {reason}", ha="center", va="center", fontsize=12)
    return _save(figure, path)


def _finish(figure: Figure | None, path: Path, title: str, reason: str) -> Path:
    return _save(figure, path) if figure is not None else placeholder(path, title, reason)


# --------------------------------------------------------------------------- Figs 5-8: curves


def curve_data(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, init, variant, metric (accuracy|loss), split (train|val) and epoch: ``n`` seeds
    with a value, their ``mean``, ``low`` (min) and ``high`` (max). A replayed epoch counts once
    (the last row wins); a seed missing an epoch (or a NaN value) is left out of that epoch's mean."""
    columns = [*GROUP_KEYS, "metric", "split", "epoch", "n", "mean", "low", "high"]
    present = [c for c in CURVE_COLUMNS if c in epochs.columns]
    if epochs.empty or not present:
        return pd.DataFrame(columns=columns)
    keys = [*GROUP_KEYS, *_units(epochs), "epoch"]
    long = epochs.drop_duplicates(keys, keep="last").melt(id_vars=keys, value_vars=present, var_name="column")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    long["metric"] = long["column"].map(lambda c: CURVE_COLUMNS[c][0])
    long["split"] = long["column"].map(lambda c: CURVE_COLUMNS[c][1])
    stats = long.groupby([*GROUP_KEYS, "metric", "split", "epoch"])["value"].agg(
        n="count", mean="mean", low="min", high="max")
    return stats.reset_index()[columns]


def draw_curves(epochs: pd.DataFrame) -> Figure | None:
    """Smelyakov Figs 5-8: one row per backbone (× variant when several), accuracy and loss panels
    over epochs (0 = before training); val dark with dots, train light; pretrained solid, random
    dashed; with several seeds the mean line and a min-max band. Each line's ``gid`` is
    ``backbone|variant|init|split|metric``, its band's ``band|`` + the same."""
    data = curve_data(epochs)
    if data.empty:
        return None
    rows = _order(data[GROUP_KEYS].drop_duplicates())[["backbone", "variant"]].drop_duplicates()
    many_variants = rows["variant"].nunique() > 1
    palette = backbone_palette(list(rows["backbone"]))
    n_max, last_epoch = int(data["n"].max()), int(data["epoch"].max())
    with _style():
        figure = Figure(figsize=(11, 1.2 + 2.9 * len(rows)), layout="constrained")
        axes = figure.subplots(len(rows), 2, sharex=True, squeeze=False)
        for ax in axes[1:, 0]:  # accuracy on one scale; loss per row (a diverging arm would flatten the rest)
            ax.sharey(axes[0, 0])
        for (backbone, variant), row in zip(rows.itertuples(index=False), axes):
            name = f"{backbone} · {variant}" if many_variants else backbone
            for ax, metric in zip(row, ("accuracy", "loss")):
                for (init, split), curve in data[(data["backbone"] == backbone) & (data["variant"] == variant)
                                                 & (data["metric"] == metric)].groupby(["init", "split"]):
                    color = palette[backbone] if split == "val" else _light(palette[backbone], 0.55)
                    ax.plot(curve["epoch"], curve["mean"], color=color, ls=INIT_STYLE.get(init, ":"),
                            lw=2.0 if split == "val" else 1.6, marker="o" if split == "val" else None,
                            ms=3.5, markevery=max(1, last_epoch // 15), gid=f"{backbone}|{variant}|{init}|{split}|{metric}")
                    if n_max > 1:
                        ax.fill_between(curve["epoch"], curve["low"], curve["high"], color=color, alpha=0.18, lw=0,
                                        gid=f"band|{backbone}|{variant}|{init}|{split}|{metric}")
                ax.set_title(f"{name}: {metric}", fontsize=11)
                ax.set_ylabel(METRIC_LABEL[metric])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[-1]:
            ax.set_xlabel("epoch (0 = before training)")
        grey = "0.25"
        handles = [Line2D([], [], color=grey, ls="-", lw=2, label="pretrained"),
                   Line2D([], [], color=grey, ls="--", lw=2, label="random init"),
                   Line2D([], [], color=grey, lw=2, marker="o", ms=4, label="val (dark, dots)"),
                   Line2D([], [], color=_light(grey, 0.55), lw=1.6, label="train (light)")]
        if n_max > 1:
            handles.append(Patch(color=grey, alpha=0.25, label=f"band: min–max over {_unit_word(epochs)}"))
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        figure.suptitle(f"Training curves ({_spread_note(n_max, _unit_word(epochs), 'band = min–max')})")
    return figure


def plot_curves(epochs: pd.DataFrame, path: Path) -> Path:
    """Write ``draw_curves`` as a PNG at ``path`` (placeholder when there are no metric values)."""
    return _finish(draw_curves(epochs), path, "Training curves", "no epoch metrics recorded")


# --------------------------------------------------------------------------- Figs 9-10: initial metrics


def initial_bar_data(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, init, variant and metric (accuracy|loss): the validation value after epoch 1 as
    ``n``, ``mean``, ``low`` (min) and ``high`` (max) across seeds (and folds)."""
    columns = [*GROUP_KEYS, "metric", "n", "mean", "low", "high"]
    first = epochs[epochs["epoch"] == 1] if "epoch" in epochs.columns else epochs.iloc[0:0]
    present = [c for c in ("val_acc", "val_loss") if c in first.columns]
    if first.empty or not present:
        return pd.DataFrame(columns=columns)
    first = first.drop_duplicates([*GROUP_KEYS, *_units(first)], keep="last")
    long = first.melt(id_vars=GROUP_KEYS, value_vars=present, var_name="column")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long["metric"] = long["column"].map({"val_acc": "accuracy", "val_loss": "loss"})
    stats = long.dropna(subset=["value"]).groupby([*GROUP_KEYS, "metric"])["value"].agg(
        n="count", mean="mean", low="min", high="max")
    return stats.reset_index()[columns]


def draw_initial_bars(epochs: pd.DataFrame) -> Figure | None:
    """Smelyakov Figs 9-10: validation accuracy and loss after epoch 1 per backbone, pretrained
    (full colour) beside random (light, hatched), min-max error bars across seeds, values on the
    bars. Each bar's ``gid`` is ``backbone|variant|init|metric``."""
    data = initial_bar_data(epochs)
    if data.empty:
        return None
    groups = _order(data[GROUP_KEYS].drop_duplicates())
    slots = groups[["backbone", "variant"]].drop_duplicates().reset_index(drop=True)
    many_variants = slots["variant"].nunique() > 1
    inits = [i for i in INIT_ORDER if i in set(groups["init"])] + sorted(set(groups["init"]) - set(INIT_ORDER))
    palette = backbone_palette(list(slots["backbone"]))
    width, n_max = 0.8 / max(2, len(inits)), int(data["n"].max())
    with _style():
        panel = max(4.4, 1.2 + 1.05 * len(slots) * len(inits) / 2)  # inches per panel; side by side when they fit
        side = panel <= 6.5
        figure = Figure(figsize=(2 * panel + 0.6, 4.8) if side else (min(16.0, panel + 0.6), 8.6), layout="constrained")
        axes = figure.subplots(1, 2) if side else figure.subplots(2, 1)
        for ax, metric in zip(axes, ("accuracy", "loss")):
            top = data.loc[data["metric"] == metric, "high"].max()
            for s, slot in slots.iterrows():
                for k, init in enumerate(inits):
                    x = s + (k - (len(inits) - 1) / 2) * width
                    bar = data[(data["backbone"] == slot["backbone"]) & (data["variant"] == slot["variant"])
                               & (data["init"] == init) & (data["metric"] == metric)]
                    if bar.empty:
                        ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
                        continue
                    mean, low, high, n = bar[["mean", "low", "high", "n"]].iloc[0]
                    color = palette[slot["backbone"]]
                    solid = init == "pretrained"  # the same look in every figure, whatever inits a study has
                    ax.bar(x, mean, width * 0.95, color=color if solid else _light(color, 0.55),
                           hatch=None if solid else "//", edgecolor="0.2", lw=0.6,
                           gid=f"{slot['backbone']}|{slot['variant']}|{init}|{metric}")
                    if n > 1:
                        ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="0.1", capsize=3, lw=1)
                    ax.text(x, high + 0.015 * top, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
            names = [f"{b}\n{v}" if many_variants else b for b, v in slots.itertuples(index=False)]
            tilt = sum(len(n.split("\n")[0]) for n in names) > 9 * panel  # ~9 label characters per inch
            ax.set_xticks(range(len(slots)), names, rotation=25 if tilt else 0, ha="right" if tilt else "center",
                          rotation_mode="anchor")
            ax.set_xlim(-0.6, len(slots) - 0.4)
            if np.isfinite(top) and top > 0:
                ax.set_ylim(0, top * 1.12)
            ax.set(title=f"validation {metric} after epoch 1", xlabel="backbone", ylabel=METRIC_LABEL[metric])
            ax.grid(axis="x", visible=False)
        handles = [Patch(facecolor="0.45" if init == "pretrained" else _light("0.45", 0.55),
                         hatch=None if init == "pretrained" else "//", edgecolor="0.2", label=init) for init in inits]
        if n_max > 1:
            handles.append(Line2D([], [], color="0.1", marker="|", ms=10, lw=1,
                                  label=f"error bar: min–max over {_unit_word(epochs)}"))
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        figure.suptitle(f"Initial metrics, epoch 1 ({_spread_note(n_max, _unit_word(epochs), 'error bars = min–max')})")
    return figure


def plot_initial_bars(epochs: pd.DataFrame, path: Path) -> Path:
    """Write ``draw_initial_bars`` as a PNG at ``path`` (placeholder when no arm has an epoch 1)."""
    return _finish(draw_initial_bars(epochs), path, "Initial metrics (epoch 1)", "no arm finished epoch 1")


# --------------------------------------------------------------------------- Tables 2-5 as heatmaps


def heatmap_data(mcr_mofr: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The four matrices drawn, keyed "accuracy MCR", "loss MCR", "accuracy MOFR", "loss MOFR":
    rows ``<backbone>_<init>`` (``_<variant>`` appended when several variants), columns the windows
    in epoch order, values the mean over seeds (NaN seeds skipped; NaN when none has a value)."""
    frame = mcr_mofr.assign(value=pd.to_numeric(mcr_mofr["value"], errors="coerce"))
    models = _order(frame[GROUP_KEYS].drop_duplicates())
    names = models["backbone"].astype(str) + "_" + models["init"].astype(str)
    if models["variant"].nunique() > 1:
        names = names + "_" + models["variant"].astype(str)
    windows = window_order(frame["window"].astype(str).unique())
    means = frame.assign(window=frame["window"].astype(str)).groupby(
        [*GROUP_KEYS, "metric", "kind", "window"])["value"].mean()
    matrices = {}
    for kind in ("MCR", "MOFR"):
        for metric in ("accuracy", "loss"):
            rows = [[means.get((*model, metric, kind, w), np.nan) for w in windows]
                    for model in models[GROUP_KEYS].itertuples(index=False)]
            matrices[f"{metric} {kind}"] = pd.DataFrame(rows, index=pd.Index(names, name="model"),
                                                        columns=pd.Index(windows, name="window"), dtype=float)
    return matrices


def draw_mcr_mofr_heatmaps(mcr_mofr: pd.DataFrame) -> Figure | None:
    """Four heatmaps of ``heatmap_data`` (rows MCR / MOFR, columns accuracy / loss), annotated with
    3 decimals, diverging colours centred at 0 with a symmetric range per panel; row labels in the
    backbone's colour; blank cells are undefined (a window with a missing epoch)."""
    if mcr_mofr.empty or pd.to_numeric(mcr_mofr["value"], errors="coerce").notna().sum() == 0:
        return None
    matrices = heatmap_data(mcr_mofr)
    backbone_of = dict(zip(next(iter(matrices.values())).index, _order(mcr_mofr[GROUP_KEYS].drop_duplicates())["backbone"]))
    palette = backbone_palette(list(backbone_of.values()))
    n_rows, n_cols = next(iter(matrices.values())).shape
    n_max = int(mcr_mofr.dropna(subset=["value"]).groupby([*GROUP_KEYS, "metric", "kind", "window"]).size().max())
    with _style():
        figure = Figure(figsize=(max(10, 2 * (2.6 + 0.85 * n_cols)), 1.6 + 2 * (0.9 + 0.42 * n_rows)), layout="constrained")
        axes = figure.subplots(2, 2)
        for ax, (title, matrix) in zip(axes.flat, matrices.items()):
            limit = np.nanmax(np.abs(matrix.to_numpy())) if matrix.notna().any().any() else 1.0
            annot = matrix.map(lambda v: f"{v:.3f}".replace("-0.000", "0.000"))  # no "-0.000"
            sns.heatmap(matrix, ax=ax, cmap="vlag", center=0, vmin=-limit, vmax=limit, annot=annot, fmt="",
                        annot_kws={"fontsize": 9}, linewidths=0.5, linecolor="white", cbar_kws={"shrink": 0.9})
            ax.set_title(f"{title.split()[0]}-based {title.split()[1]}", fontsize=11)
            ax.set_xlabel("epoch window")
            ax.set_ylabel("model" if ax is axes[0, 0] or ax is axes[1, 0] else "")
            ax.tick_params(axis="x", rotation=0)
            ax.tick_params(axis="y", rotation=0)
            for label in ax.get_yticklabels():
                label.set_color(palette.get(backbone_of.get(label.get_text()), "black"))
        note = f"mean over {n_max} {_unit_word(mcr_mofr)}" if n_max > 1 else "one seed per arm"
        figure.suptitle(f"Mean convergence rate (MCR) and mean overfitting rate (MOFR) per epoch window\n"
                        f"({note}; blue < 0 < red; blank = undefined: a missing epoch in the window)", fontsize=12)
    return figure


def plot_mcr_mofr_heatmaps(mcr_mofr: pd.DataFrame, path: Path) -> Path:
    """Write ``draw_mcr_mofr_heatmaps`` as a PNG at ``path`` (placeholder when no value is defined)."""
    return _finish(draw_mcr_mofr_heatmaps(mcr_mofr), path, "MCR / MOFR", "no window has a value")


# --------------------------------------------------------------------------- accuracy vs cost


def cost_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """The per-arm ``summary`` for ``plot_accuracy_vs_cost`` from ``trials.csv``: completed trials
    only, one row per backbone × init × variant with test_acc_mean, test_acc_std (ddof=1, NaN with
    one seed), n, params_trainable and train_images_per_s (means across seeds)."""
    done = trials[trials["status"] == "completed"] if "status" in trials.columns else trials
    columns = [*GROUP_KEYS, "test_acc_mean", "test_acc_std", "n", "params_trainable", "train_images_per_s"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    numeric = done.assign(**{c: pd.to_numeric(done.get(c), errors="coerce") for c in
                             ("test_acc", "params_trainable", "train_images_per_s")})
    summary = numeric.groupby(GROUP_KEYS, sort=False).agg(
        test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"), n=("test_acc", "count"),
        params_trainable=("params_trainable", "mean"), train_images_per_s=("train_images_per_s", "mean"))
    return summary.reset_index()[columns]


def pareto_front(summary: pd.DataFrame, cost: str = "params_trainable") -> pd.DataFrame:
    """The arms no other arm beats: for ``params_trainable`` maximal test_acc_mean and minimal cost,
    for ``train_images_per_s`` maximal accuracy and maximal throughput. An arm is dominated when
    another is at least as good on both and strictly better on one (equal points all stay:
    ``ferbench.reports.derived.pareto_optimal``). Rows without a finite accuracy and cost (or with
    params <= 0, which a log axis cannot show) are left out. Sorted by cost ascending."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    front = pareto_optimal(_cost_points(summary, cost), {"test_acc_mean": True, cost: COSTS[cost][1] == "max"})
    return front.sort_values([cost, "test_acc_mean"], kind="stable")


def _cost_points(summary: pd.DataFrame, cost: str) -> pd.DataFrame:
    if summary.empty:
        return summary
    frame = summary.assign(**{c: pd.to_numeric(summary[c], errors="coerce") for c in ("test_acc_mean", "test_acc_std", cost)})
    keep = np.isfinite(frame["test_acc_mean"]) & np.isfinite(frame[cost])
    if cost == "params_trainable":
        keep &= frame[cost] > 0  # drawn on a log axis
    return frame[keep]


def draw_accuracy_vs_cost(summary: pd.DataFrame, cost: str = "params_trainable") -> Figure | None:
    """Test accuracy (mean, ±1 SD error bars when known) against ``cost``, one marker per arm:
    colour = backbone, shape = init (hollow for the 2nd, 3rd... variant); the Pareto front as a grey
    step line (``gid`` "pareto") with its arms labelled (text ``gid`` "pareto-label")."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    points = _cost_points(summary, cost)
    if points.empty:
        return None
    points = _order(points)
    front = pareto_front(points, cost)
    palette = backbone_palette(list(points["backbone"]))
    variants = list(dict.fromkeys(points["variant"]))
    label, goal = COSTS[cost]
    with _style():
        figure = Figure(figsize=(10, 5.6), layout="constrained")
        ax = figure.add_subplot()
        for row in points.itertuples(index=False):
            filled = row.variant == variants[0]
            color = palette[row.backbone]
            ax.errorbar(row._asdict()[cost], row.test_acc_mean, yerr=None if np.isnan(row.test_acc_std) else row.test_acc_std,
                        marker=INIT_MARKER.get(row.init, "D"), ms=9, color=color, mfc=color if filled else "white",
                        mew=1.6, capsize=4, lw=1.2, ls="none", zorder=3)
        if cost == "params_trainable":
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.15)
        left, right = ax.get_xlim()
        edge = right if goal == "min" else left  # the best accuracy holds on from the front's last arm
        xs = [*front[cost], edge] if goal == "min" else [edge, *front[cost]]
        ys = [*front["test_acc_mean"], front["test_acc_mean"].iloc[-1]] if goal == "min" else \
             [front["test_acc_mean"].iloc[0], *front["test_acc_mean"]]
        ax.plot(xs, ys, drawstyle="steps-post" if goal == "min" else "steps-pre", color="0.35", lw=1.4, zorder=2, gid="pareto")
        ax.set_xlim(left, right)
        ax.set(xlabel=label, ylabel="test accuracy")
        handles = [Line2D([], [], ls="none", marker="o", ms=9, color=palette[b], label=b) for b in palette]
        handles += [Line2D([], [], ls="none", marker=INIT_MARKER.get(i, "D"), ms=9, color="0.35", label=i)
                    for i in dict.fromkeys(points["init"])]
        handles += [Line2D([], [], ls="none", marker="o", ms=9, color="0.35", mfc="white" if k else "0.35", label=f"variant {v}")
                    for k, v in enumerate(variants) if len(variants) > 1]
        handles.append(Line2D([], [], color="0.35", lw=1.4, label="Pareto front"))
        figure.legend(handles=handles, loc="outside right upper", frameon=False)
        better = "smaller" if goal == "min" else "faster"
        spread = "mean over seeds, error bars ±1 SD" if points["test_acc_std"].notna().any() else "one seed per arm"
        figure.suptitle(f"Test accuracy vs {label.split(' (')[0]} ({spread})\n"
                        f"Pareto front (step line): arms with no other arm at least as accurate and {better}", fontsize=12)
        texts = [f"{r.backbone} · {r.init}" + (f" · {r.variant}" if len(variants) > 1 else "") for r in front.itertuples()]
        _place_labels(figure, ax, list(zip(front[cost], front["test_acc_mean"], texts)),
                      list(zip(points[cost], points["test_acc_mean"])))
    return figure


def plot_accuracy_vs_cost(summary: pd.DataFrame, path: Path, cost: str = "params_trainable") -> Path:
    """Write ``draw_accuracy_vs_cost`` as a PNG at ``path``. ``summary``: one row per arm (backbone ×
    init × variant, seeds pooled) with columns backbone, init, variant, test_acc_mean, test_acc_std
    (NaN with one seed: no error bar), params_trainable, train_images_per_s, as ``cost_summary``
    builds from trials.csv. Placeholder when no arm has a finite accuracy and cost."""
    return _finish(draw_accuracy_vs_cost(summary, cost), path, "Accuracy vs cost", "no completed arm with test accuracy")


# Label offsets tried in turn (points): right, left, above, below, then farther out.
LABEL_OFFSETS = [(9, 6), (9, -16), (-9, 6), (-9, -16), (0, 12), (0, -22), (18, 18), (-18, 18), (18, -28), (-18, -28)]


def _place_labels(figure: Figure, ax, labels: list[tuple[float, float, str]], points: list[tuple[float, float]]) -> None:
    """Annotate each ``(x, y, text)`` (``gid`` "pareto-label") at the first offset in ``LABEL_OFFSETS``
    whose box stays inside the axes and clear of the markers and of the labels placed before it (the
    least overlapping offset when none is clear): a greedy stand-in for adjustText."""
    FigureCanvasAgg(figure)
    figure.draw_without_rendering()  # lay out first, so data -> pixel positions are final
    renderer = figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    radius = 9 * figure.dpi / 72  # marker size 9 pt, with a margin
    obstacles = [Bbox.from_bounds(px - radius / 2, py - radius / 2, radius, radius)
                 for px, py in ax.transData.transform(np.asarray(points, dtype=float))]
    for x, y, text in labels:
        best = None
        for dx, dy in LABEL_OFFSETS:
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=9, gid="pareto-label",
                               ha="left" if dx > 0 else "right" if dx < 0 else "center",
                               bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7", "alpha": 0.9})
            box = note.get_window_extent(renderer)
            outside = (max(0.0, inside.x0 - box.x0) + max(0.0, box.x1 - inside.x1)
                       + max(0.0, inside.y0 - box.y0) + max(0.0, box.y1 - inside.y1))
            clash = sum(_overlap(box, other) for other in obstacles) + 50 * outside
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, note, box)
            else:
                note.remove()
            if clash == 0:
                break
        obstacles.append(best[2])


def _overlap(a: Bbox, b: Bbox) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
