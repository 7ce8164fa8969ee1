"""Training epoch, evaluation pass and batch boundaries (harness/train/loop.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.train.augment import InputAdapter
from ferbench.harness.tasks.classification import accuracy_and_loss
from ferbench.harness.train.loop import NonFiniteLoss, batch_bounds, predict, train_one_epoch

CPU = torch.device("cpu")


def adapter_for(name: str, size: int = 48) -> InputAdapter:
    info = get_backbone_info(name)
    return InputAdapter(size=size, in_chans=info.in_chans, channel_order=info.channel_order, mean=info.mean, std=info.std)


def bright_dark_problem(n: int = 64, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: dark noisy images; class 1: bright noisy images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels == 1, 170, 40).view(n, 1, 1)
    noise = torch.randint(-40, 41, (n, size, size), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


@pytest.mark.parametrize("n", [0, 1, 2, 5, 31, 32, 33, 64, 65, 100, 129])
@pytest.mark.parametrize("batch_size", [2, 3, 16, 32, 64])
def test_batch_bounds_cover_everything_without_a_trailing_single(n, batch_size):
    bounds = batch_bounds(n, batch_size)
    if n == 0:
        assert bounds == []
        return
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, hi), (lo, _) in zip(bounds, bounds[1:]):
        assert hi == lo, "batches must be contiguous"
    sizes = [hi - lo for lo, hi in bounds]
    assert all(size >= 1 for size in sizes)
    assert all(size <= batch_size for size in sizes[:-1])
    assert sizes[-1] <= batch_size + 1  # a trailing single joins the last batch
    if n > 1:
        assert 1 not in sizes, f"a batch of one: {bounds}"
    assert len(bounds) == max(1, -(-n // batch_size) - (n % batch_size == 1 and n > batch_size))


def test_batch_bounds_examples():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(1, 4) == [(0, 1)]
    assert batch_bounds(8, 8) == [(0, 8)]


def run_epochs(epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    images, labels = bright_dark_problem()
    model = create_backbone("small_cnn", num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    indices = torch.arange(len(labels))
    stats = [
        train_one_epoch(model, optimizer, images, labels, indices, batch_size=16, adapter=adapter_for("small_cnn"),
                        augment=None, generator=generator, device=CPU)
        for _ in range(epochs)
    ]
    return model, stats


def test_training_reduces_loss_on_an_easy_problem():
    _, stats = run_epochs(6)
    for epoch in stats:
        assert 0.0 <= epoch.acc <= 1.0
        assert epoch.loss > 0
        assert epoch.images == 64
        assert epoch.seconds > 0 and epoch.images_per_s > 0
    assert stats[-1].loss < stats[0].loss * 0.7, [s.loss for s in stats]
    assert stats[-1].acc >= 0.9, [s.acc for s in stats]


def test_training_is_reproducible_with_the_same_seeds():
    model_a, stats_a = run_epochs(2, seed=3)
    model_b, stats_b = run_epochs(2, seed=3)
    assert [(s.acc, s.loss) for s in stats_a] == [(s.acc, s.loss) for s in stats_b]
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_epoch_metrics_are_running_averages_weighted_by_batch_size():
    # With a learning rate of 0 and no BatchNorm/dropout, the running average over the epoch's
    # batches equals the full-dataset metric, but only when batches are weighted by their size
    # (64 images in batches of 24, 24, 16).
    torch.manual_seed(0)
    images, labels = bright_dark_problem(size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    adapter = InputAdapter(size=8, in_chans=1, channel_order="GRAY", mean=(0.5,), std=(0.5,))
    indices = torch.arange(64)
    stats = train_one_epoch(model, optimizer, images, labels, indices, batch_size=24, adapter=adapter,
                            augment=None, generator=torch.Generator().manual_seed(0), device=CPU)
    with torch.no_grad():
        acc, loss = accuracy_and_loss(model(adapter(images)), labels)
    assert stats.images == 64
    assert stats.acc == pytest.approx(acc, abs=1e-9)
    assert stats.loss == pytest.approx(loss, rel=1e-5)


def test_training_covers_only_the_given_indices():
    torch.manual_seed(0)
    images, labels = bright_dark_problem(size=8)
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    adapter = InputAdapter(size=8, in_chans=1, channel_order="GRAY", mean=(0.5,), std=(0.5,))
    subset = torch.arange(0, 64, 3)  # 22 images
    stats = train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, subset,
                            batch_size=7, adapter=adapter, augment=None,
                            generator=torch.Generator().manual_seed(0), device=CPU)
    assert stats.images == 22
    assert seen == [7, 7, 8]  # 22 = 7 + 7 + 7 + 1 → the single joins the last batch


def test_training_with_augmentation_runs_and_changes_inputs():
    torch.manual_seed(0)
    images, labels = bright_dark_problem()
    model = create_backbone("small_cnn", num_classes=2)
    augment = dict(hflip=True, rotation_deg=10.0, zoom=0.1, translate=0.1, shear_deg=0.0)
    stats = train_one_epoch(model, torch.optim.Adam(model.parameters(), lr=1e-3), images, labels,
                            torch.arange(64), batch_size=32, adapter=adapter_for("small_cnn"), augment=augment,
                            generator=torch.Generator().manual_seed(0), device=CPU)
    assert stats.images == 64 and 0.0 <= stats.acc <= 1.0 and stats.loss > 0


def test_predict_returns_logits_in_index_order():
    torch.manual_seed(0)
    images, labels = bright_dark_problem()
    model, _ = run_epochs(1)
    model.train()  # predict must switch to eval mode itself
    adapter = adapter_for("small_cnn")
    indices = torch.tensor([5, 63, 0, 17, 2, 40, 41, 9, 30, 11])
    logits = predict(model, images, indices, batch_size=3, adapter=adapter, device=CPU)
    assert not model.training
    assert logits.shape == (10, 2) and logits.dtype == torch.float32
    with torch.no_grad():
        direct = model.eval()(adapter(images[indices]))
        one_by_one = torch.cat([model(adapter(images[i : i + 1])) for i in indices.tolist()])
    assert torch.allclose(logits, direct, atol=1e-5)
    assert torch.allclose(logits, one_by_one, atol=1e-5)
    # Different order in, same logits permuted out.
    reversed_logits = predict(model, images, indices.flip(0), batch_size=4, adapter=adapter, device=CPU)
    assert torch.allclose(reversed_logits, logits.flip(0), atol=1e-5)


def test_predict_on_no_indices_is_empty():
    model = create_backbone("small_cnn", num_classes=2)
    images, _ = bright_dark_problem(n=4)
    out = predict(model, images, torch.arange(0), batch_size=8, adapter=adapter_for("small_cnn"), device=CPU)
    assert out.numel() == 0


def test_accuracy_and_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [1.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 0])
    acc, loss = accuracy_and_loss(logits, targets)
    assert acc == pytest.approx(0.75)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731  (cross-entropy of two logits)
    assert loss == pytest.approx((softplus(-2) + softplus(-2) + softplus(2) + softplus(-1)) / 4)


def test_a_loss_that_becomes_infinite_or_nan_names_its_first_batch():
    """An absurd learning rate blows the weights up after the first step: batch 1 is finite, batch 2 is not."""
    torch.manual_seed(0)
    images, labels = bright_dark_problem(n=64)
    model = create_backbone("small_cnn", num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteLoss) as caught:
        train_one_epoch(model, optimizer, images, labels, torch.arange(64), batch_size=16, adapter=adapter_for("small_cnn"),
                        augment=None, generator=torch.Generator().manual_seed(0), device=CPU)
    assert (caught.value.batch, caught.value.batches) == (2, 4)
    assert caught.value.at_epoch(3).startswith(f"loss became {caught.value.kind} at epoch 3, batch 2 of 4")
    assert caught.value.kind in ("NaN", "infinite")
