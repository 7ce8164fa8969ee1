"""Harness overhead: a FERBench trial's training images/s against the bare PyTorch loop.

Each backbone and input size runs as studies through ``run_study`` (the entry ``ferbench run`` uses),
each in a fresh process with a fresh Ray, so its trial runs in a fresh worker: SynthFER at the input
size (no resize), augmentation off (its cost is the data-path figure), fp32 on CPU, ``resources.cpu``
threads, three epochs. Epoch 1 warms the kernels up; a trial's figure is the mean of epochs 2 and 3
(``train_images_per_s``, what the trial reports).

The bare loop trains the same number of images in batches of the same size in a fresh process with
a trial worker's allocator settings, kept warm: a warm-up pass, then two timed passes before the
first trial, between each trial and the next, and after the last (bare, trial, bare, trial, ...,
bare). Each trial's ratio is its figure over the mean of the bare passes right before and right
after it; the configuration's figure is the median of ``REPEATS`` such ratios. A small VM's speed
drifts by 10% and more over minutes: one trial against its bracket swung by ±10% from one run to
the next, both ways, so one ratio measures the VM as much as the harness. The bare loop's own change
across each trial (``bare_drifts``) is reported beside the ratios. Each epoch is two to four seconds
of training (more images for faster models): sub-second epochs swung the ratio by ±10% on their own.
The trial's study renders no report (nothing here reads it).
"""

from __future__ import annotations

import math
from statistics import mean, median

from benchmarks.bare_loop import BareLoopProcess
from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.95, at_least=True)
BATCH = 64
# input size → backbone → training images per epoch: 2-4 s of training on 2 CPU cores
FULL = {48: {"small_cnn": 2048, "mobilenet_v1": 832, "resnet50": 256},
        96: {"small_cnn": 320, "mobilenet_v1": 320, "resnet50": 128}}
QUICK = {48: {"small_cnn": 128}}
TIMED_PASSES = 2  # the trial's epochs 2 and 3
REPEATS, QUICK_REPEATS = 3, 2  # trials per configuration, interleaved with the bare loop's passes


def _trial_images_per_s(child) -> tuple[float, list[float]]:
    """(mean training images/s of the trial's epochs after the first, every epoch's figure)."""
    rows = sorted((r for r in child.epochs if r["epoch"] >= 1), key=lambda r: r["epoch"])
    rates = [float(r["train_images_per_s"]) for r in rows]
    return mean(rates[1:]), rates


def measure(backbone: str, size: int, train_images: int, threads: int, repeats: int = REPEATS) -> dict:
    """``repeats`` trials, each between two blocks of timed passes of one bare-loop process."""
    overrides = study_overrides(backbone, num_images=math.ceil(train_images / 0.8), image_size=size, cpu=threads,
                                epochs=1 + TIMED_PASSES, batch_size=BATCH)
    trials = []
    with BareLoopProcess(backbone, size=size, train_images=train_images, batch_size=BATCH, threads=threads) as bare:
        blocks = [bare.timed_passes(TIMED_PASSES)]
        for _ in range(repeats):
            trials.append(_trial_images_per_s(run_study_child(overrides, ray_cpus=threads, render_report=False)))
            blocks.append(bare.timed_passes(TIMED_PASSES))
    bare_rates = [mean(block) for block in blocks]
    references = [(before + after) / 2 for before, after in zip(bare_rates, bare_rates[1:])]
    ratios = [harness / reference for (harness, _), reference in zip(trials, references)]
    row = {
        "backbone": backbone, "size": size, "train_images": train_images, "threads": threads,
        "ratio": median(ratios), "ratios": ratios,
        "harness_images_per_s": median(harness for harness, _ in trials), "bare_images_per_s": mean(bare_rates),
        "bare_drifts": [(after - before) / reference for before, after, reference in zip(bare_rates, bare_rates[1:], references)],
        "harness_epochs_images_per_s": [rates for _, rates in trials], "bare_epochs_images_per_s": blocks,
    }
    print(f"  overhead {backbone}@{size}: ratios {', '.join(f'{r:.3f}' for r in ratios)} (median {row['ratio']:.3f}); "
          f"harness {row['harness_images_per_s']:.1f} img/s, bare {row['bare_images_per_s']:.1f}", flush=True)
    return row


def run(quick: bool = False, threads: int = 2) -> list[dict]:
    return [measure(backbone, size, images, threads, QUICK_REPEATS if quick else REPEATS)
            for size, per_backbone in (QUICK if quick else FULL).items() for backbone, images in per_backbone.items()]
