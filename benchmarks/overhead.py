"""Harness overhead: a FERBench trial's training images/s against the bare PyTorch loop.

Each backbone and input size is one study through ``run_study`` (the entry ``ferbench run`` uses),
in a fresh process with a fresh Ray, so its trial runs in a fresh worker: SynthFER at the input size
(no resize), augmentation off (its cost is the data-path figure), fp32 on CPU, ``resources.cpu``
threads, three epochs. Epoch 1 warms the kernels up; the trial's figure is the mean of epochs 2
and 3 (``train_images_per_s``, what the trial reports).

The bare loop trains the same number of images in batches of the same size in a fresh process with
a trial worker's allocator settings: a warm-up pass, then two timed passes right before the trial's
study and two right after it, from the same process (kept waiting while the study runs). The
reference is the mean of those four passes: a small VM's speed drifts by 10% and more over
minutes, and measuring the two sides minutes apart turned that drift into the ratio. The
before/after difference (``bare_drift``) is reported beside it. Each epoch is two to four seconds
of training (more images for faster models): sub-second epochs swung the ratio by ±10% on their
own. The trial's study renders no report (nothing here reads it).
"""

from __future__ import annotations

import math
from statistics import mean

from benchmarks.bare_loop import BareLoopProcess
from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.95, at_least=True)
BATCH = 64
# input size → backbone → training images per epoch: 2-4 s of training on 2 CPU cores
FULL = {48: {"small_cnn": 2048, "mobilenet_v1": 832, "resnet50": 256},
        96: {"small_cnn": 320, "mobilenet_v1": 320, "resnet50": 128}}
QUICK = {48: {"small_cnn": 128, "mobilenet_v1": 128}}
TIMED_PASSES = 2  # the trial's epochs 2 and 3


def measure(backbone: str, size: int, train_images: int, threads: int) -> dict:
    """One trial bracketed by timed passes of one bare-loop process."""
    with BareLoopProcess(backbone, size=size, train_images=train_images, batch_size=BATCH, threads=threads) as bare:
        before = bare.timed_passes(TIMED_PASSES)
        child = run_study_child(
            study_overrides(backbone, num_images=math.ceil(train_images / 0.8), image_size=size, cpu=threads,
                            epochs=1 + TIMED_PASSES, batch_size=BATCH),
            ray_cpus=threads, render_report=False,
        )
        after = bare.timed_passes(TIMED_PASSES)
    rows = sorted((r for r in child.epochs if r["epoch"] >= 1), key=lambda r: r["epoch"])
    harness = mean(float(r["train_images_per_s"]) for r in rows[1:])
    before_rate, after_rate = mean(before), mean(after)
    reference = (before_rate + after_rate) / 2
    row = {
        "backbone": backbone, "size": size, "train_images": int(rows[-1]["train_size"]), "threads": threads,
        "harness_images_per_s": harness, "bare_images_per_s": reference, "ratio": harness / reference,
        "bare_before_images_per_s": before_rate, "bare_after_images_per_s": after_rate,
        "bare_drift": (after_rate - before_rate) / reference,
        "harness_epochs_images_per_s": [float(r["train_images_per_s"]) for r in rows],
        "bare_epochs_images_per_s": [before, after],
    }
    print(f"  overhead {backbone}@{size}: harness {harness:.1f} img/s, bare {before_rate:.1f} before / {after_rate:.1f} after, ratio {row['ratio']:.3f}", flush=True)
    return row


def run(quick: bool = False, threads: int = 2) -> list[dict]:
    return [measure(backbone, size, images, threads)
            for size, per_backbone in (QUICK if quick else FULL).items() for backbone, images in per_backbone.items()]
