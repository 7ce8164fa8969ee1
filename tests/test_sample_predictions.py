"""Sample test images with each model's predicted probabilities (Smelyakov Figs 11-17): the
driver's pick, collecting the trials' probabilities from a folder, the figure, a real study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.experiment import experiment_paths, read_json
from ferbench.harness.data.samples import load_samples, save_samples, select_samples
from ferbench.harness.spec import arm_id
from ferbench.harness.data.splits import load_splits
from ferbench.harness.study.layout import TEST_PREDICTIONS_FILE
from ferbench.reports.sample_predictions import collect_sample_probabilities, model_styles, plot_sample_predictions

CLASSES = ("angry", "happy", "sad")
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1, 0, 1, 0])  # "sad" has two images, one in the test split
TEST = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10])
IMAGES = np.arange(len(LABELS) * 4 * 4, dtype=np.uint8).reshape(len(LABELS), 4, 4)


def test_selection_is_deterministic_counts_per_class_and_stays_in_the_test_split():
    first = select_samples(IMAGES, LABELS, CLASSES, TEST, per_class=2, seed=42)
    again = select_samples(IMAGES, LABELS, CLASSES, TEST[::-1], per_class=2, seed=42)  # test order does not matter
    for key in ("indices", "labels", "class_names", "images"):
        np.testing.assert_array_equal(first[key], again[key])
    assert list(first["labels"]) == [0, 0, 1, 1, 2]  # by class; sad has a single test image
    assert set(first["indices"]) <= set(TEST) and len(set(first["indices"])) == 5
    np.testing.assert_array_equal(first["labels"], LABELS[first["indices"]])
    np.testing.assert_array_equal(first["images"], IMAGES[first["indices"]])
    assert first["images"].dtype == np.uint8 and list(first["class_names"]) == list(CLASSES)
    picks = {tuple(select_samples(IMAGES, LABELS, CLASSES, TEST, 2, seed)["indices"]) for seed in range(8)}
    assert len(picks) > 1  # the seed, not the file order, decides which images are shown
    assert len(select_samples(IMAGES, LABELS, CLASSES, TEST, per_class=0, seed=42)["indices"]) == 0
    everything = select_samples(IMAGES, LABELS, CLASSES, TEST, per_class=100, seed=1)
    assert sorted(everything["indices"]) == sorted(TEST)


def test_samples_round_trip_and_absent_file(tmp_path):
    samples = select_samples(np.zeros((12, 5, 5, 3), np.uint8), LABELS, CLASSES, TEST, 1, 0)
    save_samples(tmp_path / "samples.npz", samples)
    loaded = load_samples(tmp_path / "samples.npz")
    assert set(loaded) == set(samples) and loaded["images"].shape == (3, 5, 5, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temp file left behind
    assert load_samples(tmp_path / "missing.npz") is None


def _fake_experiment(root, samples, trials: list[tuple[dict, np.ndarray, np.ndarray | None]]):
    """An experiment folder as ferbench.harness.study.experiment and Tune lay it out: grid.json, samples.npz and one
    ``<arm_id>_<trial_id>/`` per arm with params.json and (when given) test_predictions.npz."""
    paths = experiment_paths(root)
    save_samples(paths["samples"], samples)
    arms = []
    for cell, indices, probabilities in trials:
        arm = {**cell, "arm_id": arm_id(cell), "status": cell.get("status", "scheduled"), "reason": "", "weights_source": ""}
        arms.append(arm)
        trial_dir = root / f"{arm['arm_id']}_0000{len(arms)}"
        atomic_write_json(trial_dir / "params.json", {"arm": arm})
        if probabilities is not None:
            np.savez_compressed(trial_dir / TEST_PREDICTIONS_FILE, indices=indices, targets=LABELS[indices],
                                probabilities=probabilities)
    atomic_write_json(paths["grid"], arms)
    return root


def _cell(backbone, init, seed, **extra):
    return {"backbone": backbone, "init": init, "variant": "baseline", "seed": seed, **extra}


def _probabilities(indices: np.ndarray, shift: float) -> np.ndarray:
    raw = np.stack([indices + 1.0, 2.0 + shift * indices, np.full(len(indices), 3.0)], axis=1)
    return raw / raw.sum(axis=1, keepdims=True)


def test_collect_averages_each_models_trials_at_the_sample_indices(tmp_path):
    samples = select_samples(IMAGES, LABELS, CLASSES, TEST, 1, 42)
    other_fold = np.array([5, 11])  # a test part without any of the samples
    exp = _fake_experiment(tmp_path, samples, [
        (_cell("small_cnn", "random", 0), TEST, _probabilities(TEST, 0.5)),
        (_cell("small_cnn", "random", 1), TEST[::-1], _probabilities(TEST[::-1], 2.0)),  # stored order differs
        (_cell("small_cnn", "random", 2), other_fold, _probabilities(other_fold, 9.0)),
        (_cell("small_cnn", "pretrained", 0), TEST, _probabilities(TEST, 1.0)),
        (_cell("resnet50", "pretrained", 0), TEST, None),  # interrupted: no predictions yet
        (_cell("resnet50", "random", 0, status="unavailable"), TEST, _probabilities(TEST, 3.0)),
    ])
    loaded, probs = collect_sample_probabilities(exp)
    np.testing.assert_array_equal(loaded["indices"], samples["indices"])
    assert set(probs["model"]) == {"small_cnn_random_baseline", "small_cnn_pretrained_baseline"}
    assert len(probs) == 2 * len(samples["indices"]) * len(CLASSES)
    for position, index in enumerate(samples["indices"]):
        rows = probs[(probs["sample"] == position) & (probs["model"] == "small_cnn_random_baseline")]
        expected = (_probabilities(np.array([index]), 0.5) + _probabilities(np.array([index]), 2.0))[0] / 2
        np.testing.assert_allclose(rows["probability"], expected)
        assert list(rows["class"]) == list(CLASSES) and set(rows["n_trials"]) == {2}
        assert set(rows["index"]) == {index} and set(rows["true_class"]) == {CLASSES[LABELS[index]]}
    sums = probs.groupby(["sample", "model"])["probability"].sum()
    np.testing.assert_allclose(sums, 1.0)


def test_figure_is_a_png_and_placeholders_keep_the_link(tmp_path):
    samples = select_samples(IMAGES, LABELS, CLASSES, TEST, 2, 42)
    exp = _fake_experiment(tmp_path / "exp", samples, [
        (_cell(b, i, 0), TEST, _probabilities(TEST, s)) for s, (b, i) in enumerate(
            [("small_cnn", "random"), ("small_cnn", "pretrained"), ("resnet50", "pretrained")])])
    figure = plot_sample_predictions(*collect_sample_probabilities(exp), tmp_path / "samples.png")
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 400
    with Image.open(plot_sample_predictions(None, pd.DataFrame(), tmp_path / "none.png")) as image:
        assert image.format == "PNG" and image.width > 100
    with Image.open(plot_sample_predictions(samples, pd.DataFrame(), tmp_path / "no_trials.png")) as image:
        assert image.format == "PNG" and image.width > 100


def test_models_share_the_backbone_colour_random_is_lighter_and_hatched():
    probs = pd.DataFrame({"backbone": ["b", "b", "a"], "init": ["random", "pretrained", "pretrained"],
                          "variant": ["baseline"] * 3})
    probs["model"] = probs["backbone"] + "_" + probs["init"] + "_" + probs["variant"]  # as the samples table names them
    styles = model_styles(probs)
    assert list(styles) == ["a_pretrained_baseline", "b_pretrained_baseline", "b_random_baseline"]
    assert styles["b_pretrained_baseline"]["hatch"] is None and styles["b_random_baseline"]["hatch"] == "//"
    assert styles["b_pretrained_baseline"]["color"] != styles["a_pretrained_baseline"]["color"]
    assert sum(styles["b_random_baseline"]["color"]) > sum(styles["b_pretrained_baseline"]["color"])


def test_real_study_stores_sample_images_and_the_report_can_draw_them(reference_study, tmp_path):
    """The session's reference experiment (``report.samples_per_class=1``)."""
    from helpers import REFERENCE

    from ferbench.harness.spec import load_spec

    per_class = load_spec("quick", REFERENCE).report.samples_per_class
    experiment = reference_study.report_dir.parent
    samples = load_samples(experiment_paths(experiment)["samples"])
    test = load_splits(experiment_paths(experiment)["splits"])[0]["test"]
    in_test = read_json(experiment_paths(experiment)["manifest"])["split_class_counts"]["test"]
    counts = np.bincount(samples["labels"], minlength=len(samples["class_names"]))
    assert dict(zip(samples["class_names"], counts.tolist())) == {name: min(per_class, n) for name, n in in_test.items()}
    assert counts.max() == per_class
    assert set(samples["indices"]) <= set(test) and samples["images"].dtype == np.uint8
    assert len(samples["images"]) == len(samples["indices"])
    _, probs = collect_sample_probabilities(experiment)
    models = {f"{b}_{i}_baseline" for b in ("small_cnn", "mobilenet_v1") for i in ("pretrained", "random")}
    assert set(probs["model"]) == models | {"small_cnn_random_pseudo_label"}
    assert len(probs) == len(set(probs["model"])) * len(samples["indices"]) * len(samples["class_names"])
    np.testing.assert_allclose(probs.groupby(["sample", "model"])["probability"].sum(), 1.0, rtol=1e-5)
    with Image.open(plot_sample_predictions(samples, probs, tmp_path / "real.png")) as image:
        assert image.format == "PNG"


@pytest.mark.parametrize("per_class", [0, 2])
def test_driver_writes_samples_only_when_asked(tmp_path, per_class):
    from ferbench.harness.data.dataset import FerDataset
    from ferbench.harness.study.experiment import write_experiment_inputs
    from ferbench.harness.study.preflight import Preflight
    from ferbench.harness.spec import load_spec

    spec = load_spec("quick", [f"report.samples_per_class={per_class}"])
    dataset = FerDataset(name="tiny", images=IMAGES, labels=LABELS, class_names=CLASSES)
    split = {"train": np.array([11]), "val": np.array([5]), "test": TEST}
    write_experiment_inputs(tmp_path, spec, Preflight(dataset=dataset, splits={0: split}, arms=[]), ["test"])
    stored = load_samples(experiment_paths(tmp_path)["samples"])
    if per_class == 0:
        assert stored is None
    else:
        expected = select_samples(IMAGES, LABELS, CLASSES, TEST, per_class, spec.split.seed)
        np.testing.assert_array_equal(stored["indices"], expected["indices"])
        np.testing.assert_array_equal(stored["images"], IMAGES[expected["indices"]])


def test_spec_refuses_a_negative_sample_count():
    from ferbench.harness.spec import load_spec

    with pytest.raises(Exception, match="samples_per_class"):
        load_spec("quick", ["report.samples_per_class=-1"])
