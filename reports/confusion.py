"""Normalised confusion matrices of the test split, one panel per model (Arsirii et al.'s figures).

Rows are true classes, normalised to sum to 1 (recall on the diagonal), averaged over the seeds
(and folds) of a model, so models trained on differently sized test parts stay comparable.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.reports.derived import model_names
from ferbench.reports.figures import placeholder


def normalised_confusion(confusion: dict[str, dict], trials: pd.DataFrame) -> dict[str, tuple[list[str], np.ndarray]]:
    """model (``<backbone>_<init>_<variant>[_<extra-axis values>]``) → (class names, mean row-normalised matrix).

    A class without test images has an all-zero row, kept as zeros rather than NaN.
    """
    models = model_names(trials).set_axis(trials["arm_id"])
    grouped: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    for arm_id, entry in confusion.items():
        matrix = np.asarray(entry["matrix"], dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        grouped.setdefault(models[arm_id], []).append(np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0))
        names[models[arm_id]] = entry["class_names"]
    return {model: (names[model], np.mean(stack, axis=0)) for model, stack in grouped.items()}


def plot_confusion_matrices(confusion: dict[str, dict], trials: pd.DataFrame, path: Path) -> Path:
    matrices = normalised_confusion(confusion, trials)
    if not matrices:
        return placeholder(path, "Normalised confusion matrices", "no completed trial with test results")
    import matplotlib.figure
    import seaborn as sns

    columns = min(3, len(matrices))
    rows = math.ceil(len(matrices) / columns)
    figure = matplotlib.figure.Figure(figsize=(4.6 * columns, 4.2 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, (model, (classes, matrix)) in zip(axes, matrices.items()):
        sns.heatmap(matrix, ax=ax, vmin=0, vmax=1, cmap="Blues", annot=True, fmt=".2f", annot_kws={"size": 7},
                    xticklabels=classes, yticklabels=classes, cbar=False, square=True)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(labelsize=8)
    for ax in axes[len(matrices):]:
        ax.set_visible(False)
    figure.suptitle("Test confusion matrices\nrows normalised (recall on the diagonal), mean over seeds", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path
