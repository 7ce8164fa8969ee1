"""The report's comparison figures: PNGs written, and what they draw checked against hand-computed
values by reading the matplotlib artists back (no mocks)."""

from __future__ import annotations

import math

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferbench.reports.figures import (
    backbone_palette, cost_summary, curve_data, draw_accuracy_vs_cost, draw_curves, draw_initial_bars,
    draw_mcr_mofr_heatmaps, heatmap_data, initial_bar_data, pareto_front, plot_accuracy_vs_cost, plot_curves,
    plot_initial_bars, plot_mcr_mofr_heatmaps,
)

BASE = {("alpha", "pretrained"): 0.30, ("alpha", "random"): 0.20, ("beta", "pretrained"): 0.40, ("beta", "random"): 0.10}


def val_acc(backbone: str, init: str, seed: int, epoch: int) -> float:
    return BASE[backbone, init] + 0.1 * epoch + 0.02 * seed


def epochs_frame() -> pd.DataFrame:
    """2 backbones × 2 inits × 2 seeds × epochs 0-2; beta/random seed 1 lacks epoch 2, and
    alpha/pretrained seed 0 replays epoch 1 (a stale first row that must lose to the last)."""
    rows = []
    for (backbone, init) in BASE:
        for seed in (0, 1):
            for epoch in (0, 1, 2):
                if (backbone, init, seed, epoch) == ("beta", "random", 1, 2):
                    continue
                acc = val_acc(backbone, init, seed, epoch)
                if (backbone, init, seed, epoch) == ("alpha", "pretrained", 0, 1):
                    rows.append(dict(rows[-1], epoch=1, val_acc=0.99, val_loss=9.0))  # replayed, superseded below
                rows.append({"trial_id": f"t_{backbone}_{init}_{seed}", "arm_id": f"{backbone}_{init}_baseline_s{seed}",
                             "backbone": backbone, "init": init, "variant": "baseline", "seed": seed, "epoch": epoch,
                             "train_acc": acc + 0.05, "train_loss": 2.0 - acc, "val_acc": acc, "val_loss": 2.1 - acc})
    return pd.DataFrame(rows)


def assert_png(path, min_width=500, min_height=150):
    assert path.is_file() and path.stat().st_size > 2_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min_width <= image.width <= 2400 and min_height <= image.height <= 2600, image.size
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 18) or []) > 10  # drawn, not a blank canvas
        return image.size


def lines_by_gid(figure) -> dict[str, object]:
    return {line.get_gid(): line for ax in figure.axes for line in ax.get_lines() if line.get_gid()}


def same_color(a, b) -> bool:
    return np.allclose(mcolors.to_rgb(a), mcolors.to_rgb(b))


# --------------------------------------------------------------------------- palette


def test_palette_is_colorblind_in_sorted_name_order():
    palette = backbone_palette(["vgg_face", "alpha", "mobilenet", "alpha"])
    assert list(palette) == ["alpha", "mobilenet", "vgg_face"]
    import seaborn as sns
    assert palette["alpha"] == sns.color_palette("colorblind")[0] and palette["vgg_face"] == sns.color_palette("colorblind")[2]


# --------------------------------------------------------------------------- curves


def test_curve_data_means_over_seeds_with_a_missing_epoch_and_a_replay():
    data = curve_data(epochs_frame()).set_index(["backbone", "init", "metric", "split", "epoch"])
    cell = data.loc[("alpha", "pretrained", "accuracy", "val", 1)]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.30 + 0.1 + 0.01)  # the replayed 0.99 lost
    assert (cell["low"], cell["high"]) == pytest.approx((0.40, 0.42))
    missing = data.loc[("beta", "random", "accuracy", "val", 2)]
    assert missing["n"] == 1 and missing["mean"] == pytest.approx(0.10 + 0.2)  # only seed 0 has epoch 2
    assert data.loc[("beta", "random", "loss", "train", 0), "mean"] == pytest.approx(2.0 - 0.11)


def test_curves_draw_the_mean_lines_and_styles(tmp_path):
    epochs = epochs_frame()
    figure = draw_curves(epochs)
    lines = lines_by_gid(figure)
    assert len(lines) == 2 * 2 * 2 * 2  # backbone × init × split × metric
    val = lines["alpha|baseline|pretrained|val|accuracy"]
    assert list(val.get_xdata()) == [0, 1, 2]
    assert np.allclose(val.get_ydata(), [0.31, 0.41, 0.51])
    assert np.allclose(lines["beta|baseline|random|val|accuracy"].get_ydata(), [0.11, 0.21, 0.30])
    assert np.allclose(lines["beta|baseline|pretrained|train|loss"].get_ydata(), [2.0 - 0.41, 2.0 - 0.51, 2.0 - 0.61])  # train_loss = 2 - val_acc
    assert val.get_linestyle() == "-" and lines["alpha|baseline|random|val|accuracy"].get_linestyle() == "--"
    palette = backbone_palette(["alpha", "beta"])
    assert same_color(lines["beta|baseline|random|val|loss"].get_color(), palette["beta"])
    assert not same_color(lines["beta|baseline|random|train|loss"].get_color(), palette["beta"])  # train lighter
    assert "min–max" in figure._suptitle.get_text() and "2 seeds" in figure._suptitle.get_text()
    bands = {band.get_gid(): band for ax in figure.axes for band in ax.collections}
    assert len(bands) == 16  # one per line
    outline = bands["band|alpha|baseline|pretrained|val|accuracy"].get_paths()[0].vertices
    assert outline[:, 1].min() == pytest.approx(0.30) and outline[:, 1].max() == pytest.approx(0.52)  # min-max over seeds
    assert [ax.get_title() for ax in figure.axes] == ["alpha: accuracy", "alpha: loss", "beta: accuracy", "beta: loss"]
    assert assert_png(plot_curves(epochs, tmp_path / "curves.png")) == (1320, 840)


def test_curves_keep_folds_apart_and_one_seed_draws_no_band():
    one = epochs_frame().query("seed == 0 and not (epoch == 1 and val_acc > 0.9)")
    folds = pd.concat([one.assign(fold=0), one.assign(fold=1, val_acc=one["val_acc"] + 0.1)])
    data = curve_data(folds).set_index(["backbone", "init", "metric", "split", "epoch"])
    assert data.loc[("alpha", "random", "accuracy", "val", 1), "n"] == 2
    assert data.loc[("alpha", "random", "accuracy", "val", 1), "mean"] == pytest.approx(0.30 + 0.05)
    figure = draw_curves(one)
    assert sum(len(ax.collections) for ax in figure.axes) == 0 and "one seed" in figure._suptitle.get_text()


# --------------------------------------------------------------------------- initial bars


def test_initial_bars_heights_and_min_max_error_bars(tmp_path):
    epochs = epochs_frame()
    data = initial_bar_data(epochs).set_index(["backbone", "init", "metric"])
    assert data.loc[("beta", "pretrained", "accuracy"), ["n", "mean", "low", "high"]].tolist() == pytest.approx([2, 0.51, 0.50, 0.52])
    assert data.loc[("alpha", "random", "loss"), "mean"] == pytest.approx(2.1 - 0.31)
    figure = draw_initial_bars(epochs)
    bars = {patch.get_gid(): patch for ax in figure.axes for patch in ax.patches if patch.get_gid()}
    assert len(bars) == 8
    assert bars["alpha|baseline|pretrained|accuracy"].get_height() == pytest.approx(0.41)  # not the replayed 0.99
    assert bars["beta|baseline|random|loss"].get_height() == pytest.approx(2.1 - 0.21)
    palette = backbone_palette(["alpha", "beta"])
    assert same_color(bars["beta|baseline|pretrained|accuracy"].get_facecolor(), palette["beta"])
    assert bars["beta|baseline|random|accuracy"].get_hatch() == "//"
    labels = {text.get_text() for ax in figure.axes for text in ax.texts}
    assert {"0.410", "0.310", "0.510", "0.210", f"{2.1 - 0.41:.3f}"} <= labels
    error_spans = {tuple(np.round(segment[:, 1], 6)) for ax in figure.axes for container in ax.containers
                   if hasattr(container, "has_yerr") for segment in container.lines[2][0].get_segments()}
    assert (0.50, 0.52) in error_spans and len(error_spans) == 8  # min-max across the two seeds, every bar
    assert "min–max" in figure._suptitle.get_text()
    assert_png(plot_initial_bars(epochs, tmp_path / "initial.png"))


def test_initial_bars_mark_a_missing_arm():
    epochs = epochs_frame().query("not (backbone == 'beta' and init == 'random')")
    figure = draw_initial_bars(epochs)
    assert sum(text.get_text() == "n/a" for ax in figure.axes for text in ax.texts) == 2  # accuracy and loss panels


# --------------------------------------------------------------------------- MCR / MOFR heatmaps


def mcr_frame() -> pd.DataFrame:
    """Windows listed out of order ("11-12" sorts before "6-10" as text); value = code of the cell + seed / 100;
    beta/random loss MCR 6-10 has one NaN seed, alpha/random accuracy MOFR 11-12 none at all."""
    rows = []
    for b, (backbone, init) in enumerate(BASE):
        for metric in ("loss", "accuracy"):
            for kind in ("MOFR", "MCR"):
                for w, window in enumerate(["11-12", "1-5", "6-10"]):
                    for seed in (0, 1):
                        value = (b + 1) * 0.1 + w * 0.01 + seed * 0.002 if metric == "accuracy" else -((b + 1) * 0.1 + w * 0.01)
                        if (backbone, init, metric, kind, window, seed) == ("beta", "random", "loss", "MCR", "6-10", 1):
                            value = np.nan
                        if (backbone, init, metric, kind, window) == ("alpha", "random", "accuracy", "MOFR", "11-12"):
                            value = np.nan
                        rows.append({"backbone": backbone, "init": init, "variant": "baseline", "seed": seed,
                                     "arm_id": f"{backbone}_{init}_baseline_s{seed}", "metric": metric, "kind": kind,
                                     "window": window, "value": value})
    return pd.DataFrame(rows)


def test_heatmap_matrices_mean_over_seeds_in_window_order(tmp_path):
    mcr = mcr_frame()
    matrices = heatmap_data(mcr)
    assert list(matrices) == ["accuracy MCR", "loss MCR", "accuracy MOFR", "loss MOFR"]
    acc = matrices["accuracy MCR"]
    assert list(acc.index) == ["alpha_pretrained", "alpha_random", "beta_pretrained", "beta_random"]
    assert list(acc.columns) == ["1-5", "6-10", "11-12"]
    assert acc.loc["beta_pretrained", "1-5"] == pytest.approx(0.3 + 0.01 + 0.001)
    assert acc.loc["alpha_pretrained", "11-12"] == pytest.approx(0.1 + 0.001)
    assert matrices["loss MCR"].loc["beta_random", "6-10"] == pytest.approx(-(0.4 + 0.02))  # the NaN seed skipped
    assert math.isnan(matrices["accuracy MOFR"].loc["alpha_random", "11-12"])

    figure = draw_mcr_mofr_heatmaps(mcr)
    assert [ax.get_title() for ax in figure.axes[:4]] == ["accuracy-based MCR", "loss-based MCR", "accuracy-based MOFR", "loss-based MOFR"]
    for ax, matrix in zip(figure.axes[:4], matrices.values()):  # heatmap axes; the colour bars come after
        mesh = ax.collections[0]
        drawn = np.ma.filled(np.ma.masked_invalid(mesh.get_array()).astype(float), np.nan).reshape(matrix.shape)
        assert np.allclose(drawn, matrix.to_numpy(), equal_nan=True)
        low, high = mesh.get_clim()
        assert low == pytest.approx(-high) and high == pytest.approx(np.nanmax(np.abs(matrix.to_numpy())))
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts[:3] == ["0.111", "0.121", "0.101"] and len(texts) == 12
    assert len(figure.axes[2].texts) == 11  # the undefined cell stays blank
    assert_png(plot_mcr_mofr_heatmaps(mcr, tmp_path / "mcr.png"))


# --------------------------------------------------------------------------- accuracy vs cost


def cost_frame() -> pd.DataFrame:
    """Hand-made arms; by params the front is d, a, b, f; by throughput f, b, c, a, d. c and e lose to b on
    both; h ties a on accuracy and loses on cost alone; g has no accuracy."""
    arms = {"a": (1e5, 0.50, 500), "b": (2e5, 0.60, 300), "c": (3e5, 0.55, 400), "d": (5e4, 0.40, 600),
            "e": (2e5, 0.58, 250), "f": (1e6, 0.70, 100), "g": (1e4, np.nan, 900), "h": (1.5e5, 0.50, 200)}
    return pd.DataFrame([{"backbone": name, "init": "pretrained" if name in "abf" else "random", "variant": "baseline",
                          "test_acc_mean": acc, "test_acc_std": 0.01 if name != "a" else np.nan,
                          "params_trainable": params, "train_images_per_s": speed} for name, (params, acc, speed) in arms.items()])


def test_pareto_front_by_params_and_by_throughput():
    summary = cost_frame()
    assert list(pareto_front(summary, "params_trainable")["backbone"]) == ["d", "a", "b", "f"]
    assert list(pareto_front(summary, "train_images_per_s")["backbone"]) == ["f", "b", "c", "a", "d"]
    twins = pd.concat([summary, summary.iloc[[1]].assign(init="random")])  # an equal point is not dominated
    assert list(pareto_front(twins)["backbone"]) == ["d", "a", "b", "b", "f"]
    with pytest.raises(ValueError, match="cost must be one of"):
        pareto_front(summary, "flops")


@pytest.mark.parametrize("cost, front, edge", [("params_trainable", ["d", "a", "b", "f"], "right"),
                                               ("train_images_per_s", ["f", "b", "c", "a", "d"], "left")])
def test_accuracy_vs_cost_draws_arms_front_and_labels(tmp_path, cost, front, edge):
    summary = cost_frame()
    figure = draw_accuracy_vs_cost(summary, cost)
    ax = figure.axes[0]
    step = lines_by_gid(figure)["pareto"]
    costs = summary.set_index("backbone").loc[front, cost].tolist()
    xs = list(step.get_xdata())
    assert (xs[:-1] if edge == "right" else xs[1:]) == pytest.approx(costs)  # plus the run to the axis edge
    assert ax.get_xscale() == ("log" if cost == "params_trainable" else "linear")
    labels = sorted(t.get_text() for t in ax.texts if t.get_gid() == "pareto-label")
    assert labels == sorted(f"{name} · {'pretrained' if name in 'abf' else 'random'}" for name in front)
    assert len(ax.containers) == 7  # one errorbar per arm; g has no accuracy
    markers = [container.lines[0] for container in ax.containers]
    by_x = {float(line.get_xdata()[0]): line for line in markers}
    assert by_x[summary.loc[5, cost]].get_marker() == "o" and by_x[summary.loc[2, cost]].get_marker() == "s"
    assert sum(len(c.lines[2]) > 0 for c in ax.containers) == 6  # a has no std: no error bar
    assert_png(plot_accuracy_vs_cost(summary, tmp_path / f"{cost}.png", cost))


def test_cost_summary_from_trials():
    trials = pd.DataFrame({
        "backbone": ["x", "x", "x", "y"], "init": ["random"] * 4, "variant": ["baseline"] * 4, "seed": [0, 1, 2, 0],
        "status": ["completed", "completed", "failed", "completed"], "test_acc": [0.5, 0.7, np.nan, 0.4],
        "params_trainable": [10, 10, 10, 20], "train_images_per_s": [100.0, 300.0, np.nan, 50.0]})
    summary = cost_summary(trials).set_index("backbone")
    assert summary.loc["x", ["test_acc_mean", "n", "params_trainable", "train_images_per_s"]].tolist() == pytest.approx([0.6, 2, 10, 200])
    assert summary.loc["x", "test_acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert math.isnan(summary.loc["y", "test_acc_std"])


# --------------------------------------------------------------------------- nothing to draw


def test_nothing_to_draw_writes_a_no_data_placeholder(tmp_path):
    empty_epochs = epochs_frame().iloc[0:0]
    only_epoch_0 = epochs_frame().query("epoch == 0")
    no_values = epochs_frame().assign(train_acc=np.nan, train_loss=np.nan, val_acc=np.nan, val_loss=np.nan)
    assert draw_curves(empty_epochs) is None and draw_curves(no_values) is None
    assert draw_initial_bars(only_epoch_0) is None and draw_mcr_mofr_heatmaps(mcr_frame().iloc[0:0]) is None
    assert draw_mcr_mofr_heatmaps(mcr_frame().assign(value=np.nan)) is None
    assert draw_accuracy_vs_cost(cost_frame().assign(test_acc_mean=np.nan)) is None
    assert cost_summary(pd.DataFrame({"backbone": ["x"], "init": ["random"], "variant": ["baseline"],
                                      "status": ["failed"], "test_acc": [np.nan]})).empty
    written = [plot_curves(no_values, tmp_path / "curves.png"), plot_initial_bars(only_epoch_0, tmp_path / "bars.png"),
               plot_mcr_mofr_heatmaps(mcr_frame().iloc[0:0], tmp_path / "mcr.png"),
               plot_accuracy_vs_cost(cost_summary(pd.DataFrame(columns=["backbone", "init", "variant", "status"])),
                                     tmp_path / "cost.png")]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (720, 264)  # the small "no data" card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "cost.png", "curves.png", "mcr.png"]  # no temp files left
