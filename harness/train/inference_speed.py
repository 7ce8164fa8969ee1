"""Inference cost of a trained model on the trial's own device: latency per image at batch 1 and
throughput at the evaluation batch size.

Why in the trial: the number that decides a deployment is measured where the model ran, with the
same threads, input adapter and precision, on real test images rather than random tensors.
Timings are medians over repeated calls after a warm-up, bounded by a small time budget so a slow
backbone costs seconds, not minutes.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ferbench.harness.train.augment import InputAdapter
from ferbench.harness.train.performance import autocast

WARMUP_CALLS = 2
MAX_CALLS = 20
BUDGET_S = 2.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_call_seconds(model: nn.Module, batch: torch.Tensor, device: torch.device) -> float:
    for _ in range(WARMUP_CALLS):
        model(batch)
    _sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < MAX_CALLS and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        model(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure_inference(
    model: nn.Module, images: torch.Tensor, *, adapter: InputAdapter, device: torch.device, batch_size: int,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> dict[str, float]:
    """``infer_latency_ms`` (batch 1, per image) and ``infer_images_per_s`` (at ``batch_size``, or
    every image given when fewer) for ``images`` (uint8, as stored), in eval mode, with the
    trial's precision and memory format."""
    model.eval()
    batch = adapter(images[:batch_size].to(device))
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    single = batch[:1]
    with autocast(device, autocast_dtype):
        latency = _median_call_seconds(model, single, device)
        throughput = len(batch) / _median_call_seconds(model, batch, device)
    return {"infer_latency_ms": latency * 1000.0, "infer_images_per_s": throughput, "infer_batch_size": len(batch)}
