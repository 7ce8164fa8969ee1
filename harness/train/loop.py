"""One epoch of training and one evaluation pass, on batches indexed from a uint8 image tensor.

The dataset never leaves its uint8 form until a batch is on the device: indexing, transfer,
augmentation and resizing are all batched tensor operations. ``autocast_dtype`` (bf16) and
``channels_last`` are the GPU fast path (see ``ferbench.harness.train.performance``); by default neither is on.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ferbench.backbones.freezing import train_mode
from ferbench.harness.train.augment import InputAdapter, random_affine
from ferbench.harness.train.performance import autocast
from ferbench.harness.tasks.classification import SingleLabelClassification



def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory. Object-store arrays are read-only; every batch is a gathered copy, so
    sharing is safe and torch's warning about non-writable arrays is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)

@dataclass
class EpochStats:
    acc: float
    loss: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch boundaries covering ``n`` items; a trailing batch of one joins the previous batch
    (BatchNorm cannot normalise a single sample)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _model_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite: the model's weights are no longer usable."""

    def __init__(self, batch: int, batches: int, value: float):
        self.batch, self.batches, self.value = batch, batches, value
        self.kind = "NaN" if math.isnan(value) else "infinite"
        super().__init__(f"loss became {self.kind} at batch {batch} of {batches}")

    def at_epoch(self, epoch: int) -> str:
        return f"loss became {self.kind} at epoch {epoch}, batch {self.batch} of {self.batches}; lower train.lr and run it again"


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    batch_size: int,
    adapter: InputAdapter,
    augment: dict | None,
    generator: torch.Generator,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    task=None,
) -> EpochStats:
    """Train over ``indices`` in a shuffled order; accuracy and loss are running averages over the
    epoch's batches (weighted by batch size), as Keras reports them. ``class_weights`` weights the
    cross-entropy per class (the balanced variant's class-weighted loss); the loss reported is then
    the weighted one being minimised. The model runs under ``autocast_dtype`` when given; the loss
    is always computed in fp32. ``task`` gives the loss and what counts as correct (default:
    single-label classification)."""
    task = task or SingleLabelClassification()
    weight = class_weights.to(device) if class_weights is not None else None
    train_mode(model)
    order = indices[torch.randperm(len(indices), generator=generator)]
    # Running sums stay on the device (no synchronisation per batch); float64 adds up exactly
    # what Python floats would.
    correct = torch.zeros((), dtype=torch.float64, device=device)  # images right (a share of each, multi-label)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first batch whose loss is NaN or infinite
    bad_loss = torch.zeros((), dtype=torch.float32, device=device)
    start = time.perf_counter()
    bounds = batch_bounds(len(order), batch_size)
    for batch_no, (lo, hi) in enumerate(bounds):
        batch_idx = order[lo:hi]
        x = adapter(images[batch_idx].to(device, non_blocking=True))
        if augment:
            x = random_affine(x, generator, **augment)
        y = labels[batch_idx].to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(_model_input(x, channels_last))
        loss = task.loss(logits, y, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += task.correct(logits, y)
        newly_bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
        first_bad = torch.where(newly_bad, batch_no, first_bad)
        bad_loss = torch.where(newly_bad, loss.detach(), bad_loss)
    total_loss, total_correct = float(loss_sum), float(correct)  # waits for the device's last batch
    if int(first_bad) >= 0:
        raise NonFiniteLoss(int(first_bad) + 1, len(bounds), float(bad_loss))
    seconds = time.perf_counter() - start
    n = len(order)
    return EpochStats(acc=total_correct / n, loss=total_loss / n, images=n, seconds=seconds)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    indices: torch.Tensor,
    *,
    batch_size: int,
    adapter: InputAdapter,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits for ``indices`` in order, in eval mode (no augmentation), as fp32 on the CPU."""
    model.eval()
    outputs = []
    with autocast(device, autocast_dtype):
        for lo, hi in batch_bounds(len(indices), batch_size):
            x = adapter(images[indices[lo:hi]].to(device, non_blocking=True))
            outputs.append(model(_model_input(x, channels_last)).float())
    outputs = [logits.cpu() for logits in outputs]  # one synchronisation at the end, not one per batch
    return torch.cat(outputs) if outputs else torch.empty(0)

