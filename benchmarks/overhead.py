"""Harness overhead: a FERBench trial's training images/s against the bare PyTorch loop.

Each backbone and input size is one study through ``run_study`` (the entry ``ferbench run`` uses),
in a fresh process with a fresh Ray, so its trial runs in a fresh worker: SynthFER at the input size
(no resize), augmentation off (its cost is the data-path figure), fp32 on CPU, ``resources.cpu``
threads, three epochs. Epoch 1 warms the kernels up; the trial's figure is the mean of epochs 2
and 3 (``train_images_per_s``, what the trial reports).

The bare loop trains the same number of images in batches of the same size in a fresh process with
a trial worker's allocator settings: a warm-up pass, then two timed passes. It runs right before
and right after the trial's study, and the reference is the mean of its four timed passes: a small
VM's speed drifts by 10% and more over minutes, and measuring the two sides minutes apart turned
that drift into the ratio. The before/after difference (``bare_drift``) is reported beside it.
Each epoch is a few seconds of training (more images for faster models): sub-second epochs
swung the ratio by ±10% on their own.
"""

from __future__ import annotations

import math
from statistics import mean

from benchmarks.bare_loop import bare_in_fresh_process
from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.95, at_least=True)
BATCH = 64
# input size → backbone → training images per epoch: 3-5 s of training on 2 CPU cores
FULL = {48: {"small_cnn": 2560, "mobilenet_v1": 1024, "resnet50": 512},
        96: {"small_cnn": 384, "mobilenet_v1": 384, "resnet50": 192}}
QUICK = {48: {"small_cnn": 128, "mobilenet_v1": 128}}
TIMED_PASSES = 2  # the trial's epochs 2 and 3


def measure(backbone: str, size: int, train_images: int, threads: int) -> dict:
    """One trial bracketed by two bare-loop runs."""
    def bare() -> dict:
        return bare_in_fresh_process(backbone, size=size, train_images=train_images, batch_size=BATCH, threads=threads,
                                     epochs=TIMED_PASSES)

    before = bare()
    child = run_study_child(
        study_overrides(backbone, num_images=math.ceil(train_images / 0.8), image_size=size, cpu=threads,
                        epochs=1 + TIMED_PASSES, batch_size=BATCH),
        ray_cpus=threads,
    )
    after = bare()
    rows = sorted((r for r in child.epochs if r["epoch"] >= 1), key=lambda r: r["epoch"])
    harness = mean(float(r["train_images_per_s"]) for r in rows[1:])
    before_rate, after_rate = mean(before["epochs_images_per_s"]), mean(after["epochs_images_per_s"])
    reference = (before_rate + after_rate) / 2
    row = {
        "backbone": backbone, "size": size, "train_images": int(rows[-1]["train_size"]), "threads": threads,
        "harness_images_per_s": harness, "bare_images_per_s": reference, "ratio": harness / reference,
        "bare_before_images_per_s": before_rate, "bare_after_images_per_s": after_rate,
        "bare_drift": (after_rate - before_rate) / reference,
        "harness_epochs_images_per_s": [float(r["train_images_per_s"]) for r in rows],
        "bare_epochs_images_per_s": [before["epochs_images_per_s"], after["epochs_images_per_s"]],
    }
    print(f"  overhead {backbone}@{size}: harness {harness:.1f} img/s, bare {before_rate:.1f} before / {after_rate:.1f} after, ratio {row['ratio']:.3f}", flush=True)
    return row


def run(quick: bool = False, threads: int = 2) -> list[dict]:
    return [measure(backbone, size, images, threads)
            for size, per_backbone in (QUICK if quick else FULL).items() for backbone, images in per_backbone.items()]
