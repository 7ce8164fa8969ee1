"""Multi-label losses: BCE against torch's, LSEP and L_pr against sums written out by hand, finite gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferbench.harness.tasks.au_losses import LOSSES, bce_loss, lpr_loss, lsep_loss, positive_weights


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _lsep_by_loops(logits: list[list[float]], targets: list[list[int]]) -> float:
    """Eq. 1 as written: every (negative v, positive u) pair of each image, then the mean over images."""
    total = 0.0
    for row, labels in zip(logits, targets):
        pairs = 0.0
        for v, is_positive_v in enumerate(labels):
            for u, is_positive_u in enumerate(labels):
                if not is_positive_v and is_positive_u:
                    pairs += math.exp(row[v] - row[u])
        total += math.log(1 + pairs)
    return total / len(logits)


def _grad(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits, targets).backward()
    return logits.grad


# --------------------------------------------------------------------------- BCE and its class weights

def test_bce_is_torchs_binary_cross_entropy_with_logits_with_and_without_weights():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator) * 3
    targets = (torch.rand(5, 4, generator=generator) > 0.5).float()
    weights = torch.tensor([0.5, 1.0, 2.0, 7.0])
    assert torch.allclose(bce_loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    assert torch.allclose(bce_loss(logits, targets.to(torch.uint8), weights),
                          F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights))
    # by hand for one entry: p = sigmoid(0) = 0.5, y = 1, weight 3 -> -3 log 0.5
    assert bce_loss(torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([3.0])).item() == pytest.approx(3 * math.log(2))


def test_positive_weights_are_negatives_over_positives_and_one_where_undefined():
    targets = np.array([[1, 0, 0, 1],
                        [1, 1, 0, 1],
                        [0, 0, 0, 1],
                        [1, 0, 0, 1]], dtype=np.uint8)
    # label 0: 1 negative / 3 positives; label 1: 3 / 1; label 2: no positive; label 3: no negative
    expected = torch.tensor([1 / 3, 3.0, 1.0, 1.0])
    assert torch.allclose(positive_weights(targets), expected)
    assert positive_weights(torch.from_numpy(targets)).dtype == torch.float32
    assert torch.isfinite(positive_weights(np.zeros((3, 2), dtype=np.uint8))).all()


# --------------------------------------------------------------------------- LSEP (eq. 1)

def test_lsep_equals_the_pairwise_sum_by_hand():
    logits = [[1.0, 0.0, -1.0],
              [0.5, 2.0, 0.0],
              [0.3, -0.7, 1.1]]
    targets = [[1, 0, 0],
               [0, 1, 1],
               [0, 0, 0]]
    # image 0: positive u=0, negatives v=1,2: exp(0-1) + exp(-1-1)
    # image 1: positives u=1,2, negative v=0: exp(0.5-2) + exp(0.5-0)
    # image 2: no positive, no pair: log(1 + 0) = 0
    by_hand = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(-1.5) + math.exp(0.5)) + 0.0) / 3
    assert _lsep_by_loops(logits, targets) == pytest.approx(by_hand)
    assert lsep_loss(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsep_matches_the_loops_on_random_batches(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 3, generator=generator) * 2
    targets = (torch.rand(3, 3, generator=generator) > 0.5).int()
    expected = _lsep_by_loops(logits.double().tolist(), targets.tolist())
    assert lsep_loss(logits, targets).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_lsep_is_stable_for_large_logits():
    # one positive u=1 at -1000, negatives at 1000 and 0: log(1 + e^2000 + e^1000) = 2000 + log(1 + e^-1000 + e^-2000)
    loss = lsep_loss(torch.tensor([[1000.0, -1000.0, 0.0]]), torch.tensor([[0, 1, 0]]))
    assert loss.item() == pytest.approx(2000.0)
    assert torch.isfinite(_grad(lsep_loss, torch.tensor([[1000.0, -1000.0, 0.0]]), torch.tensor([[0, 1, 0]]))).all()


def test_lsep_rows_without_a_pair_are_exactly_zero_with_zero_finite_gradients():
    logits = torch.tensor([[0.2, -1.0, 3.0],
                           [1.0, 2.0, -0.5],
                           [0.7, 0.1, -2.0]])
    targets = torch.tensor([[0, 0, 0],   # no positive
                            [1, 1, 1],   # all positive
                            [1, 0, 0]])
    assert lsep_loss(logits[:2], targets[:2]).item() == 0.0
    grad = _grad(lsep_loss, logits, targets)
    assert torch.isfinite(grad).all()
    assert (grad[:2] == 0).all() and (grad[2] != 0).all()
    # the mixed row alone, divided by the 3 images of the batch
    assert lsep_loss(logits, targets).item() == pytest.approx(math.log(1 + math.exp(0.1 - 0.7) + math.exp(-2.0 - 0.7)) / 3)


# --------------------------------------------------------------------------- L_pr (eq. 6)

PROBABILITIES = [[0.8, 0.1, 0.4],
                 [0.3, 0.9, 0.5]]
PR_TARGETS = [[1, 0, 1],
              [0, 1, 0]]
PR_LOGITS = torch.tensor([[_logit(p) for p in row] for row in PROBABILITIES])


def test_lpr_micro_pools_every_image_and_label_of_the_batch():
    # TP = Σ y p = 0.8 + 0.4 + 0.9 = 2.1; FP = Σ (1-y) p = 0.1 + 0.3 + 0.5 = 0.9; FN = Σ y (1-p) = 0.2 + 0.6 + 0.1 = 0.9
    # P = 2.1 / 3.0 = 0.7, R = 2.1 / 3.0 = 0.7, L = 1 - 0.49
    assert lpr_loss(PR_LOGITS, torch.tensor(PR_TARGETS), eps=0.0).item() == pytest.approx(0.51, rel=1e-6)
    assert lpr_loss(PR_LOGITS, torch.tensor(PR_TARGETS)).item() == pytest.approx(0.51, rel=1e-5)  # eps is negligible


def test_lpr_macro_averages_one_minus_pr_over_labels():
    # label 0: TP 0.8, FP 0.3, FN 0.2; label 1: TP 0.9, FP 0.1, FN 0.1; label 2: TP 0.4, FP 0.5, FN 0.6
    by_hand = ((1 - (0.8 / 1.1) * (0.8 / 1.0)) + (1 - 0.9 * 0.9) + (1 - (0.4 / 0.9) * (0.4 / 1.0))) / 3
    loops = []
    for k in range(3):
        tp = sum(PR_TARGETS[i][k] * PROBABILITIES[i][k] for i in range(2))
        fp = sum((1 - PR_TARGETS[i][k]) * PROBABILITIES[i][k] for i in range(2))
        fn = sum(PR_TARGETS[i][k] * (1 - PROBABILITIES[i][k]) for i in range(2))
        loops.append(1 - tp / (tp + fp) * tp / (tp + fn))
    assert sum(loops) / 3 == pytest.approx(by_hand)
    assert lpr_loss(PR_LOGITS, torch.tensor(PR_TARGETS), eps=0.0, average="macro").item() == pytest.approx(by_hand, rel=1e-6)


def test_lpr_without_any_positive_is_one_with_finite_gradients():
    logits = torch.tensor([[0.3, -2.0, 1.5], [0.0, 4.0, -1.0]])
    for average in ("micro", "macro"):
        loss = lambda x, y: lpr_loss(x, y, average=average)  # noqa: E731
        assert loss(logits, torch.zeros(2, 3)).item() == pytest.approx(1.0)
        assert (_grad(loss, logits, torch.zeros(2, 3)) == 0).all()  # finite: no signal, not NaN
    assert torch.isfinite(_grad(lpr_loss, logits, torch.tensor([[1, 0, 0], [0, 0, 0]]))).all()
    with pytest.raises(ValueError, match="average"):
        lpr_loss(logits, torch.zeros(2, 3), average="weighted")


# --------------------------------------------------------------------------- the registry of losses

def test_losses_share_one_signature_and_only_bce_weighted_uses_the_weights():
    assert set(LOSSES) == {"bce", "bce_weighted", "lsep", "lpr", "lpr_macro"}
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 3, generator=generator)
    targets = (torch.rand(4, 3, generator=generator) > 0.5).float()
    weights = torch.tensor([2.0, 0.5, 4.0])
    assert torch.equal(LOSSES["bce_weighted"](logits, targets, weights), bce_loss(logits, targets, weights))
    for name, plain in (("bce", bce_loss), ("lsep", lsep_loss), ("lpr", lpr_loss)):
        assert torch.equal(LOSSES[name](logits, targets, weights), plain(logits, targets)), name
        assert torch.equal(LOSSES[name](logits, targets, None), plain(logits, targets)), name
    with pytest.raises(ValueError, match="pos_weight"):
        LOSSES["bce_weighted"](logits, targets, None)


@pytest.mark.parametrize("name", ["bce", "bce_weighted", "lsep", "lpr", "lpr_macro"])
def test_losses_are_fp32_scalars_for_half_precision_logits(name):
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.bfloat16)
    targets = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.uint8)
    weights = torch.tensor([1.0, 2.0, 3.0])
    loss = LOSSES[name](logits, targets, weights)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(LOSSES[name](logits.float(), targets.float(), weights).item())


def test_lpr_macro_is_the_per_label_reading_under_its_own_loss_name():
    from ferbench.harness.tasks.au_losses import LOSSES, lpr_loss

    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.7, 0.1]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.equal(LOSSES["lpr_macro"](logits, targets, None), lpr_loss(logits, targets, average="macro"))
    assert not torch.isclose(LOSSES["lpr_macro"](logits, targets, None), LOSSES["lpr"](logits, targets, None))
