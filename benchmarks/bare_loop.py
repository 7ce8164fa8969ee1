"""The reference a trial is measured against: the plainest PyTorch training loop.

Same model (``create_backbone``), optimizer (Adam), batch size, input size, threads, device and
precision as the trial, on random tensors already in the model's input form, so that only the
model's forward, backward and optimizer step are timed.
"""

from __future__ import annotations

import threading
import time

import torch
import torch.nn.functional as F

from backbones import create_backbone, get_backbone_info
from harness.training import batch_bounds


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
    in_thread: bool = False,
) -> dict:
    """Training images/s over ``train_images`` random images: the best of ``epochs`` timed passes
    after one untimed pass, as a trial's later epochs follow its first (oneDNN builds its kernels on
    the first call of each batch shape, and a fresh process's first touches of memory are slow).
    ``in_thread`` runs the loop in a new Python thread, where Ray Tune runs a function trainable."""
    if in_thread:
        out: list[dict] = []
        kwargs = dict(size=size, train_images=train_images, batch_size=batch_size, threads=threads, lr=lr,
                      num_classes=num_classes, seed=seed, epochs=epochs)
        worker = threading.Thread(target=lambda: out.append(bare_images_per_s(backbone, **kwargs)))
        worker.start()
        worker.join()
        return out[0]
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
