"""Harness overhead: a FERBench trial's training images/s against the bare PyTorch loop.

One study per input size through ``run_study`` (the entry ``ferbench run`` uses), its backbones one
after another with ``resources.cpu`` threads each: SynthFER at the input size (no resize),
augmentation off (its cost is the data-path figure), fp32 on CPU, three epochs. Epoch 1 warms the
kernels up; the trial's figure is the better of epochs 2 and 3 (``train_images_per_s``, what the
trial reports). The bare loop trains the same number of images in batches of the same size, after
a warm-up, also best of two passes, in a fresh process with a trial worker's allocator settings;
so each trial gets a fresh worker too (``run.reuse_workers=false``): a process that trained
resnet50 before trains small_cnn at 96 px 30-40% faster than a fresh one (its heap is already
faulted in), which would flatter the harness.
"""

from __future__ import annotations

import math

from benchmarks.bare_loop import bare_in_fresh_process
from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.95, at_least=True)
BATCH = 64
BACKBONES = ["small_cnn", "mobilenet_v1", "resnet50"]
# input size → training images per epoch: seconds of training per backbone on 2 CPU cores
FULL = {48: 512, 96: 192}
QUICK = {48: 128}


def _backbone_of(trial_dir: str, backbones: list[str]) -> str:
    return next(b for b in sorted(backbones, key=len, reverse=True) if trial_dir.startswith(f"{b}_"))


def measure_size(size: int, train_images: int, backbones: list[str], threads: int) -> list[dict]:
    child = run_study_child(
        study_overrides(backbones, num_images=math.ceil(train_images / 0.8), image_size=size, cpu=threads, epochs=3,
                        batch_size=BATCH, extra=["run.max_concurrent=1", "run.reuse_workers=false"]),
        ray_cpus=threads,
    )
    results = []
    for backbone in backbones:
        rows = sorted((r for r in child.epochs if _backbone_of(r["trial_dir"], backbones) == backbone), key=lambda r: r["epoch"])
        steady = [r for r in rows if r["epoch"] >= 2]
        best = max(steady, key=lambda r: r["train_images_per_s"])
        bare = bare_in_fresh_process(backbone, size=size, train_images=int(best["train_size"]), batch_size=BATCH,
                                     threads=threads, epochs=len(steady))
        harness = float(best["train_images_per_s"])
        row = {
            "backbone": backbone, "size": size, "train_images": int(best["train_size"]), "threads": threads,
            "harness_images_per_s": harness, "bare_images_per_s": bare["images_per_s"], "ratio": harness / bare["images_per_s"],
            "harness_epochs_images_per_s": [float(r["train_images_per_s"]) for r in rows if r["epoch"] >= 1],
            "bare_epochs_images_per_s": bare["epochs_images_per_s"],
        }
        print(f"  overhead {backbone}@{size}: harness {harness:.1f} img/s, bare {bare['images_per_s']:.1f} img/s, "
              f"ratio {row['ratio']:.3f}", flush=True)
        results.append(row)
    return results


def run(quick: bool = False, threads: int = 2) -> list[dict]:
    sizes = QUICK if quick else FULL
    backbones = BACKBONES[:2] if quick else BACKBONES
    return [row for size, images in sizes.items() for row in measure_size(size, images, backbones, threads)]
