"""The reference a trial is measured against: the plainest PyTorch training loop.

Same model (``create_backbone``), optimizer (Adam), batch size, input size, threads, device and
precision as the trial, on random tensors already in the model's input form, so that only the
model's forward, backward and optimizer step are timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from backbones import create_backbone, get_backbone_info
from harness.performance import TRIAL_WORKER_ENV
from harness.training import batch_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bare_images_per_s(
    backbone: str,
    *,
    size: int,
    train_images: int,
    batch_size: int = 64,
    threads: int = 2,
    lr: float = 1e-3,
    num_classes: int = 7,
    seed: int = 0,
    epochs: int = 1,
) -> dict:
    """Training images/s over ``train_images`` random images: the best of ``epochs`` timed passes
    after one untimed pass, as a trial's later epochs follow its first (oneDNN builds its kernels on
    the first call of each batch shape, and a fresh process's first touches of memory are slow)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    info = get_backbone_info(backbone)
    model = create_backbone(backbone, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images = torch.randn(train_images, info.in_chans, size, size)
    labels = torch.randint(0, num_classes, (train_images,))
    bounds = batch_bounds(train_images, batch_size)
    model.train()

    def step(lo: int, hi: int) -> None:
        loss = F.cross_entropy(model(images[lo:hi]), labels[lo:hi])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for lo, hi in bounds:  # the warm-up pass
        step(lo, hi)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for lo, hi in bounds:
            step(lo, hi)
        rates.append(train_images / (time.perf_counter() - start))
    return {"images_per_s": max(rates), "epochs_images_per_s": rates, "images": train_images}


def bare_in_fresh_process(backbone: str, **kwargs) -> dict:
    """``bare_images_per_s`` in a new Python with a trial worker's environment (its allocator
    settings): the speed of a loop depends on what its process did before, and a trial's worker
    did nothing but import the harness."""
    env = {**os.environ, **TRIAL_WORKER_ENV, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bare_loop", json.dumps({"backbone": backbone, **kwargs})],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bare loop of {backbone} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(bare_images_per_s(request.pop("backbone"), **request)))
