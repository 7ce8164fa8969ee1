"""Multi-label scores against scikit-learn, the per-batch label share, and F1-optimal thresholds by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics

from ferbench.harness.tasks.au_metrics import (
    average_precision,
    best_thresholds,
    correct_label_share,
    label_scores,
    pr_curve,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's warnings for labels with no positive

SEEDS = [0, 1, 2, 3]


def _random_predictions(seed: int, n: int = 40, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities rounded to 0.05 (many ties) loosely tied to targets; label 3 has no positive, label 4 no negative."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < rng.uniform(0.1, 0.6, k)).astype(np.uint8)
    targets[:, 3], targets[:, 4] = 0, 1
    probabilities = np.clip(0.35 * targets + rng.random((n, k)) * 0.65, 0, 1)
    return np.round(probabilities / 0.05) * 0.05, targets


# --------------------------------------------------------------------------- label_scores

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("per_label_thresholds", [False, True])
def test_label_scores_match_scikit_learn(seed, per_label_thresholds):
    probabilities, targets = _random_predictions(seed)
    k = targets.shape[1]
    thresholds = np.random.default_rng(seed + 100).uniform(0.2, 0.8, k) if per_label_thresholds else 0.5
    predicted = (probabilities >= np.broadcast_to(thresholds, (k,))).astype(int)
    scalars, per_label = label_scores(probabilities.astype(np.float32), targets, thresholds)

    precision, recall, f1, support = metrics.precision_recall_fscore_support(targets, predicted, average=None, zero_division=0)
    np.testing.assert_allclose(per_label["precision"], precision)
    np.testing.assert_allclose(per_label["recall"], recall)
    np.testing.assert_allclose(per_label["f1"], f1)
    assert per_label["support"] == support.tolist()
    np.testing.assert_allclose(per_label["threshold"], np.broadcast_to(thresholds, (k,)), rtol=1e-6)
    np.testing.assert_allclose(per_label["average_precision"],
                               [metrics.average_precision_score(targets[:, j], probabilities[:, j]) for j in range(k)])

    for average in ("macro", "micro", "weighted"):
        assert scalars[f"{average}_f1"] == pytest.approx(metrics.f1_score(targets, predicted, average=average, zero_division=0))
    assert scalars["macro_precision"] == pytest.approx(metrics.precision_score(targets, predicted, average="macro", zero_division=0))
    assert scalars["macro_recall"] == pytest.approx(metrics.recall_score(targets, predicted, average="macro", zero_division=0))
    assert scalars["subset_acc"] == pytest.approx(metrics.accuracy_score(targets, predicted))
    assert scalars["acc"] == pytest.approx(np.mean([metrics.accuracy_score(targets[:, j], predicted[:, j]) for j in range(k)]))
    assert scalars["balanced_acc"] == pytest.approx(
        np.mean([metrics.balanced_accuracy_score(targets[:, j], predicted[:, j]) for j in range(k)]))


def test_a_probability_equal_to_its_threshold_is_predicted_present():
    scalars, per_label = label_scores(np.array([[0.5, 0.3]]), np.array([[1, 0]]), np.array([0.5, 0.3]))
    assert per_label["recall"] == [1.0, 0.0] and per_label["precision"] == [1.0, 0.0]
    assert scalars["acc"] == 0.5 and scalars["subset_acc"] == 0.0


# --------------------------------------------------------------------------- the per-batch figure

def test_correct_label_share_summed_over_batches_is_keras_binary_accuracy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=generator)
    targets = (torch.rand(10, 4, generator=generator) > 0.5).to(torch.uint8)
    keras = ((torch.sigmoid(logits) > 0.5).int() == targets).float().mean()
    total = sum(correct_label_share(logits[i:i + 3], targets[i:i + 3]) for i in range(0, 10, 3))
    assert (total / 10).item() == pytest.approx(keras.item())

    # by hand: image 0 gets 2 of 3 labels right, image 1 all 3 -> 2/3 + 1
    share = correct_label_share(torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]]), torch.tensor([[1, 0, 0], [0, 1, 1]]))
    assert share.shape == () and share.dtype == torch.float32 and share.device == torch.device("cpu")
    assert share.item() == pytest.approx(2 / 3 + 1)


# --------------------------------------------------------------------------- thresholds chosen on validation

def _f1_at(probabilities_k: np.ndarray, targets_k: np.ndarray, threshold: float) -> float:
    """F1 = 2PR / (P + R) of ``p >= threshold``, counted one image at a time."""
    tp = fp = fn = 0
    for p, y in zip(probabilities_k, targets_k):
        tp += bool(p >= threshold and y)
        fp += bool(p >= threshold and not y)
        fn += bool(p < threshold and y)
    precision, recall = (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_best_thresholds_maximise_f1_by_brute_force(seed):
    probabilities, targets = _random_predictions(seed, n=30)
    chosen = best_thresholds(probabilities, targets)
    assert chosen.shape == (targets.shape[1],)
    for k in range(targets.shape[1]):
        if targets[:, k].sum() == 0:
            assert chosen[k] == 0.5
            continue
        candidates = np.unique(probabilities[:, k])
        f1 = np.array([_f1_at(probabilities[:, k], targets[:, k], t) for t in candidates])
        best = candidates[np.isclose(f1, f1.max(), rtol=0, atol=1e-12)]
        assert chosen[k] in candidates
        assert _f1_at(probabilities[:, k], targets[:, k], chosen[k]) == pytest.approx(f1.max())
        distance = np.abs(best - 0.5).min()
        assert chosen[k] == best[np.isclose(np.abs(best - 0.5), distance, rtol=0, atol=1e-12)].max()
    # applied through label_scores, they give each label its best F1
    _, per_label = label_scores(probabilities, targets, chosen)
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            assert per_label["f1"][k] == pytest.approx(max(_f1_at(probabilities[:, k], targets[:, k], t)
                                                            for t in np.unique(probabilities[:, k])))


def test_best_threshold_ties_go_closest_to_one_half_then_higher():
    targets = np.array([[1], [0], [0], [1]])
    # at 0.875: TP 1, FN 1 -> F1 2/3; at 0.125: TP 2, FP 2 -> F1 4/6; both 0.375 from 0.5: the higher wins
    assert best_thresholds(np.array([[0.125], [0.25], [0.375], [0.875]]), targets)[0] == 0.875
    # at 0.9375 F1 2/3 (0.4375 from 0.5), at 0.375 F1 2/3 (0.125 from 0.5): the closer wins
    assert best_thresholds(np.array([[0.375], [0.5], [0.75], [0.9375]]), targets)[0] == 0.375


def test_best_thresholds_keep_the_probabilities_float32():
    probabilities = np.array([[0.3], [0.7], [0.6]], dtype=np.float32)
    chosen = best_thresholds(probabilities, np.array([[0], [1], [1]]))
    assert chosen.dtype == np.float32 and chosen[0] == np.float32(0.6)


# --------------------------------------------------------------------------- precision-recall curves

@pytest.mark.parametrize("seed", SEEDS)
def test_pr_curve_and_average_precision_equal_scikit_learns(seed):
    probabilities, targets = _random_predictions(seed)
    for k in range(targets.shape[1]):
        ours, theirs = pr_curve(probabilities[:, k], targets[:, k]), metrics.precision_recall_curve(targets[:, k], probabilities[:, k])
        for mine, expected in zip(ours, theirs):
            np.testing.assert_allclose(mine, expected, rtol=1e-12)
        assert average_precision(probabilities[:, k], targets[:, k]) == pytest.approx(
            metrics.average_precision_score(targets[:, k], probabilities[:, k]), abs=1e-12)


def test_average_precision_without_a_positive_is_zero():
    assert average_precision(np.array([0.2, 0.9, 0.4]), np.array([0, 0, 0])) == 0.0
