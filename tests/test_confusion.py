"""Normalised confusion matrices: row normalisation, averaging over seeds, empty rows, the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from ferbench.reports.confusion import normalised_confusion, plot_confusion_matrices

TRIALS = pd.DataFrame({
    "arm_id": ["a_s0", "a_s1", "b_s0"], "backbone": ["small_cnn"] * 2 + ["resnet50"],
    "init": ["random"] * 3, "variant": ["baseline"] * 3,
})
CONFUSION = {
    "a_s0": {"class_names": ["x", "y", "z"], "matrix": [[3, 1, 0], [0, 2, 2], [0, 0, 0]]},
    "a_s1": {"class_names": ["x", "y", "z"], "matrix": [[1, 1, 0], [0, 4, 0], [0, 0, 0]]},
    "b_s0": {"class_names": ["x", "y", "z"], "matrix": [[0, 2, 0], [1, 1, 0], [0, 1, 1]]},
}


def test_rows_are_normalised_then_averaged_over_seeds():
    matrices = normalised_confusion(CONFUSION, TRIALS)
    assert set(matrices) == {"small_cnn_random_baseline", "resnet50_random_baseline"}
    classes, mean = matrices["small_cnn_random_baseline"]
    assert classes == ["x", "y", "z"]
    expected = np.array([[(0.75 + 0.5) / 2, (0.25 + 0.5) / 2, 0], [0, (0.5 + 1) / 2, 0.25], [0, 0, 0]])
    np.testing.assert_allclose(mean, expected)  # the class without test images stays a zero row


def test_figure_and_placeholder(tmp_path):
    with Image.open(plot_confusion_matrices(CONFUSION, TRIALS, tmp_path / "confusion.png")) as image:
        assert image.width > 600 and image.height > 300
    with Image.open(plot_confusion_matrices({}, TRIALS, tmp_path / "empty.png")) as image:
        assert image.width > 100  # "no data" placeholder keeps the report's link valid
