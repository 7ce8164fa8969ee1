"""Sample test images beside every model's predicted class probabilities (Smelyakov et al. 2022,
Figs 11-17), rendered from the experiment folder alone: the images come from
``ferbench/samples.npz`` (written on the driver), the probabilities from each completed trial's
``test_predictions.npz``, averaged over the seeds (and folds) of a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ferbench.harness.study.layout import TEST_PREDICTIONS_FILE, experiment_paths
from ferbench.harness.data.samples import Samples, load_samples
from ferbench.harness.spec import settings_label
from ferbench.reports.collect import _trial_dir, arm_columns, arm_fields, read_grid, read_predictions, relative, try_read
from ferbench.reports.figures import GROUP_KEYS, _light, _order, _save, _style, backbone_palette, placeholder
from ferbench.reports.markdown import damaged_arms, damaged_lines, md_cell

TITLE = "Sample test images and predicted probabilities"
COLUMNS = ["sample", "index", "true_class", "model", *GROUP_KEYS, "class", "probability", "n_trials"]
VARIANT_HATCHES = ("", "..", "xx", "--", "oo", "++")
TRUE_BAND = "#fff3b0"


def _trial_probabilities(path: Path, indices: np.ndarray, n_classes: int) -> dict[int, np.ndarray]:
    """Sample position → probability row, for the samples in this trial's test split ({} when the file
    is damaged: ``ferbench.reports.collect.collect`` names it)."""
    stored = try_read(path, read_predictions)[0]
    if stored is None or stored["probabilities"].shape[1] != n_classes:
        return {}
    tested, probabilities = stored["indices"], stored["probabilities"]
    row_of = {int(index): row for row, index in enumerate(tested)}
    return {i: probabilities[row_of[int(index)]] for i, index in enumerate(indices) if int(index) in row_of}


def read_samples(path: Path) -> Samples | None:
    """``ferbench/samples.npz`` (None when the experiment has none), with every array the report reads."""
    samples = load_samples(path)
    missing = [key for key in ("images", "indices", "labels", "class_names") if samples is not None and key not in samples]
    if missing:
        raise KeyError(missing[0])
    return samples


def collect_sample_probabilities(experiment_dir: Path) -> tuple[Samples | None, pd.DataFrame]:
    """(samples or None, long table): one row per sample × model × class with the model's mean
    probability over the trials that tested the sample (a k-fold trial whose test part lacks it
    is left out). A trial counts once it has written its test predictions. A model is an arm without
    its seed: the values of extra grid axes are part of it (columns under their setting paths)."""
    experiment_dir = Path(experiment_dir)
    samples = try_read(experiment_paths(experiment_dir)["samples"], read_samples)[0]  # damaged: as if none
    if samples is None or not len(samples["indices"]):
        return samples, pd.DataFrame(columns=COLUMNS)
    class_names = [str(c) for c in samples["class_names"]]
    stacks: dict[tuple, dict[int, list[np.ndarray]]] = {}
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    axes = [column for column in arm_columns(arms) if "." in column]
    keys = [*GROUP_KEYS, *axes]
    for arm in arms:
        trial_dir = _trial_dir(experiment_dir, arm["arm_id"], arm_ids) if arm["status"] != "unavailable" else None
        if trial_dir is None or not (trial_dir / TEST_PREDICTIONS_FILE).is_file():
            continue
        found = _trial_probabilities(trial_dir / TEST_PREDICTIONS_FILE, samples["indices"], len(class_names))
        for position, row in found.items():
            stacks.setdefault(tuple(arm_fields(arm, keys).values()), {}).setdefault(position, []).append(row)
    rows = []
    for key, by_sample in stacks.items():
        for position, stack in by_sample.items():
            mean = np.mean(stack, axis=0)
            settings = settings_label(dict(zip(axes, key[len(GROUP_KEYS):])))
            base = {"sample": position, "index": int(samples["indices"][position]),
                    "true_class": class_names[int(samples["labels"][position])],
                    "model": "_".join(map(str, key[:len(GROUP_KEYS)])) + (f"_{settings}" if settings else ""),
                    **dict(zip(keys, key)), "n_trials": len(stack)}
            rows += [{**base, "class": name, "probability": float(p)} for name, p in zip(class_names, mean)]
    at = COLUMNS.index(GROUP_KEYS[-1]) + 1
    table = pd.DataFrame(rows, columns=[*COLUMNS[:at], *axes, *COLUMNS[at:]])
    return samples, table.sort_values(["sample", "model"], kind="stable").reset_index(drop=True)


def model_styles(probs: pd.DataFrame) -> dict[str, dict]:
    """model → bar colour and hatch, as in the report's other figures: the backbone's colour,
    pretrained full, random light and hatched ``//``; further variants add a dotted / crossed hatch."""
    models = _order(probs[[*GROUP_KEYS, "model"]].drop_duplicates())
    palette = backbone_palette(list(models["backbone"]))
    # the variant with the values of extra grid axes (``baseline_lr1e-04``): what tells a backbone's models apart
    kinds = [model[len(f"{backbone}_{init}_"):] for backbone, init, _, model in models.itertuples(index=False)]
    variants = sorted(set(kinds), key=lambda v: (v != "baseline", v))
    styles = {}
    for (backbone, init, _, model), kind in zip(models.itertuples(index=False), kinds):
        solid = init == "pretrained"
        hatch = ("" if solid else "//") + VARIANT_HATCHES[variants.index(kind) % len(VARIANT_HATCHES)]
        styles[model] = {"color": palette[backbone] if solid else _light(palette[backbone], 0.55), "hatch": hatch or None}
    return styles


def _draw_image(ax, image: np.ndarray, title: str) -> None:
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _draw_bars(ax, probs: pd.DataFrame, classes: list[str], true_class: str, styles: dict[str, dict]) -> None:
    """One group per class (top to bottom), one bar per model; the true class on a yellow band."""
    models = [m for m in styles if m in set(probs["model"])]
    height = 0.84 / max(len(models), 1)
    truth = classes.index(true_class)
    ax.axhspan(truth - 0.48, truth + 0.48, color=TRUE_BAND, zorder=0)
    table = probs.pivot_table(index="model", columns="class", values="probability")
    for k, model in enumerate(models):
        offsets = np.arange(len(classes)) - 0.42 + (k + 0.5) * height
        values = table.loc[model].reindex(classes).to_numpy(dtype=float)
        ax.barh(offsets, values, height * 0.92, edgecolor="0.25", lw=0.4, zorder=2, gid=f"{model}", **styles[model])
    right = sum(table.loc[m].reindex(classes).to_numpy(dtype=float).argmax() == truth for m in models)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.get_yticklabels()[truth].set_fontweight("bold")
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", visible=False)
    many = len(models) > 1
    ax.set_title(f"{right} of {len(models)} model{'s' if many else ''} predict{'' if many else 's'} {true_class}", fontsize=9)


def draw_sample_predictions(samples: Samples | None, probs: pd.DataFrame) -> Figure | None:
    """Samples in a grid (two per row when there are more than four): image, then its bars."""
    if samples is None or probs.empty:
        return None
    classes = [str(c) for c in samples["class_names"]]
    styles = model_styles(probs)
    shown = sorted(set(probs["sample"]))
    columns = 1 if len(shown) <= 4 else 2
    rows = math.ceil(len(shown) / columns)
    row_height = max(1.8, 0.5 + len(classes) * (0.04 * len(styles) + 0.1))
    legend_rows = math.ceil((len(styles) + 1) / 4)
    with _style():
        figure = Figure(figsize=(7.2 * columns, row_height * rows + 0.3 * legend_rows + 0.6), layout="constrained")
        grid = figure.add_gridspec(rows + 1, 2 * columns, width_ratios=[1, 3.4] * columns,
                                   height_ratios=[0.3 * legend_rows] + [row_height] * rows)
        for n, position in enumerate(shown):
            r, c = divmod(n, columns)
            part = probs[probs["sample"] == position]
            true_class = part["true_class"].iloc[0]
            _draw_image(figure.add_subplot(grid[r + 1, 2 * c]), samples["images"][position],
                        f"true: {true_class}\n(image {int(samples['indices'][position])})")
            bars = figure.add_subplot(grid[r + 1, 2 * c + 1])
            _draw_bars(bars, part, classes, true_class, styles)
            if r == rows - 1 or n + columns >= len(shown):
                bars.set_xlabel("predicted probability", fontsize=8)
        handles = [Patch(facecolor=s["color"], hatch=s["hatch"], edgecolor="0.25", label=m) for m, s in styles.items()]
        handles.append(Patch(facecolor=TRUE_BAND, label="true class"))
        key = figure.add_subplot(grid[0, :])  # the legend gets its own row, so it never covers the title
        key.axis("off")
        key.legend(handles=handles, loc="center", ncols=min(len(handles), 4), frameon=False, fontsize=9)
        n_max = int(probs["n_trials"].max())
        note = f"mean over up to {n_max} seeds / folds per model" if n_max > 1 else "one trial per model"
        figure.suptitle(f"{TITLE} (Smelyakov et al., Figs 11–17; {note})")
    return figure


def plot_sample_predictions(samples: Samples | None, probs: pd.DataFrame, path: Path) -> Path:
    """Write ``draw_sample_predictions`` as a PNG at ``path`` (placeholder when nothing to show)."""
    figure = draw_sample_predictions(samples, probs)
    if figure is not None:
        return _save(figure, path)
    reason = "no sample images stored" if samples is None or not len(samples["indices"]) else "no completed trial"
    return placeholder(path, TITLE, reason)


def samples_section(experiment_dir: Path, trials: pd.DataFrame) -> str:
    """``SAMPLES_SECTION``, with a ``damaged: FILE`` line for a damaged ``ferbench/samples.npz`` and for
    every arm whose ``test_predictions.npz`` is damaged (the figure shows the others)."""
    path = experiment_paths(experiment_dir)["samples"]
    notes = damaged_lines(damaged_arms(trials, TEST_PREDICTIONS_FILE))
    if path.exists() and try_read(path, read_samples)[1]:
        notes.insert(0, f"- damaged: {md_cell(relative(path, Path(experiment_dir)))} (no sample images to show)")
    return SAMPLES_SECTION + ("\n" + "\n".join(notes) + "\n" if notes else "")


SAMPLES_SECTION = (
    "## Sample test images (Smelyakov et al., Figs 11–17)\n\n"
    "A few test images per class (`report.samples_per_class`, picked once on the driver from the first fold's "
    "test split by a seeded permutation), each beside every model's predicted class probabilities, averaged "
    "over seeds (and folds). Bars take the backbone's colour, random init is light and hatched, the true class "
    "is on a yellow band. Values are in `tables/sample_predictions.csv`.\n\n"
    "![Sample test images with each model's predicted probabilities](figures/sample_predictions.png)\n"
)
