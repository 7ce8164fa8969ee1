"""Memory: a study on a FER2013-size dataset (35,887 × 48×48, 83 MB) with 1 and with 4 trials running
at once. The dataset sits in Ray's object store once; every trial maps it. So each extra trial
should cost its process (Python, torch, the harness), its model, optimizer and batches, and no
copy of the dataset.

Every process of the study (driver, Ray's daemons, workers) is sampled: RSS counts shared pages in
every process that maps them; PSS splits them between the processes, so the sum of PSS counts the
dataset once; USS is what only that process maps; anonymous memory is what a process allocated
itself (heap, tensors, Python objects), without shared libraries or the object store's mapping.
A copy of the dataset in a trial would be anonymous memory of that trial's worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, run_study_child, study_overrides
from benchmarks.data_path import FER2013_ROWS, write_fer2013_csv

BACKBONE = "mobilenet_v1"
MB = 1e6


def process_baseline() -> dict:
    """USS and anonymous memory of a fresh Python that imported what a trial worker imports."""
    code = ("import ray, psutil, ray.tune, ferbench.harness.train.trial; from benchmarks.study_child import anonymous_bytes; "
            "import os; print(psutil.Process().memory_full_info().uss, anonymous_bytes(os.getpid()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    uss, anon = out.stdout.split()[-2:]
    return {"uss_mb": float(uss) / MB, "anon_mb": float(anon) / MB}


def training_step_mb(backbone: str, batch: int = 64, size: int = 48) -> dict:
    """What model, optimizer and batches add to a process: peak RSS after two Adam steps on a batch
    less the RSS before the model was built (fresh process, one thread), beside the arithmetic of
    weights + gradients + Adam's two moments."""
    code = f"""
import torch, torch.nn.functional as F
from ferbench.backbones import create_backbone, get_backbone_info
def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss can carry its parent's)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
torch.set_num_threads(1)
info = get_backbone_info({backbone!r})
x, y = torch.randn({batch}, info.in_chans, {size}, {size}), torch.randint(0, 7, ({batch},))
before = status("VmRSS")
model = create_backbone({backbone!r}, 7)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(2):
    loss = F.cross_entropy(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
print(status("VmHWM") - before, sum(p.numel() for p in model.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    grown_kb, params = out.stdout.split()[-2:]
    return {"params": int(params), "model_and_optimizer_mb": int(params) * 4 * 4 / MB, "training_step_peak_mb": int(grown_kb) * 1024 / MB}


SPLIT_IMAGES = 300  # train, val and test images of every memory trial, whatever the dataset's size


def split_overrides(rows: int) -> tuple[tuple[float, float, float], str]:
    """Ratios and unlabeled share giving SPLIT_IMAGES train/val/test images out of ``rows``, so
    that trials on datasets of different sizes do the same work (the rest is held out, unused)."""
    held = SPLIT_IMAGES / rows
    train_share = 1 - 2 * held
    return (train_share, held, held), f"split.unlabeled_fraction={1 - SPLIT_IMAGES / (rows * train_share):.6f}"


def measure(csv: Path, rows: int, concurrent: int) -> dict:
    ratios, unlabeled = split_overrides(rows)
    overrides = study_overrides(
        BACKBONE, num_images=None, seeds=list(range(concurrent)), epochs=1, cpu=0.5, ratios=ratios,
        extra=["data.format=fer2013", f"data.path={csv}", unlabeled],
    )
    child = run_study_child(overrides, ray_cpus=2, sample_memory=True, render_report=False)
    memory = child.memory
    trials = [p for p in memory["per_process"] if p["role"] == "trial"]
    return {
        "concurrent": concurrent, "max_concurrent_seen": memory["max_concurrent_trials"],
        "peak_rss_mb": memory["peak_rss"] / MB, "peak_pss_mb": memory["peak_pss"] / MB,
        "peak_uss_mb": memory["peak_uss"] / MB, "peak_anon_mb": memory["peak_anon"] / MB,
        "trial_workers": [{k: v / MB for k, v in p.items() if k not in ("role", "title")} for p in trials], "samples": memory["samples"],
    }


def _mean_worker(run: dict, key: str = "anon") -> float:
    workers = run["trial_workers"]
    return sum(w.get(key, 0) for w in workers) / max(1, len(workers))


def run(quick: bool = False) -> dict:
    rows = 4_000 if quick else FER2013_ROWS
    control_rows = 2_000
    with tempfile.TemporaryDirectory(prefix="ferbench-bench-mem-") as folder:
        csv, small_csv = Path(folder) / "fer2013.csv", Path(folder) / "small.csv"
        write_fer2013_csv(csv, rows)
        write_fer2013_csv(small_csv, control_rows)
        one, four = measure(csv, rows, 1), measure(csv, rows, 4)
        control = measure(small_csv, control_rows, 1)  # the same trial (same split sizes) on a small dataset
    baseline = process_baseline()
    step = training_step_mb(BACKBONE)
    dataset_mb, control_mb = rows * 48 * 48 / MB, control_rows * 48 * 48 / MB
    result = {
        "backbone": BACKBONE, "dataset_mb": dataset_mb, "control_dataset_mb": control_mb, "one": one, "four": four,
        "control": control, "process_imports": baseline, **step,
        "per_extra_trial_pss_mb": (four["peak_pss_mb"] - one["peak_pss_mb"]) / 3,
        "per_extra_trial_rss_mb": (four["peak_rss_mb"] - one["peak_rss_mb"]) / 3,
        "per_extra_trial_anon_mb": (four["peak_anon_mb"] - one["peak_anon_mb"]) / 3,
        "trial_worker_anon_mb": _mean_worker(four),
        "trial_worker_object_store_resident_mb": _mean_worker(four, "shm_rss"),
        # A trial holding its own copy of the dataset would hold (dataset − control) more memory of its own.
        # (mean over the five workers of both studies: one worker's figure moves by ±40 MB run to run)
        "worker_anon_growth_with_dataset_mb": _mean_worker({"trial_workers": one["trial_workers"] + four["trial_workers"]})
        - _mean_worker(control),
    }
    result["dataset_shared"] = result["worker_anon_growth_with_dataset_mb"] < 0.5 * (dataset_mb - control_mb)
    # A trial worker's own memory beyond its imports and its training step (model, optimizer,
    # activations): Ray's worker runtime, allocator slack, evaluation batches.
    result["trial_worker_other_mb"] = result["trial_worker_anon_mb"] - baseline["anon_mb"] - step["training_step_peak_mb"]
    print(f"  memory: peak PSS {one['peak_pss_mb']:.0f} MB (1 trial) vs {four['peak_pss_mb']:.0f} MB (4 trials), "
          f"{result['per_extra_trial_pss_mb']:.0f} MB per extra trial; a trial worker's own memory "
          f"{result['trial_worker_anon_mb']:.0f} MB = imports {baseline['anon_mb']:.0f} + training step "
          f"{step['training_step_peak_mb']:.0f} + other {result['trial_worker_other_mb']:.0f} MB; a trial's own memory "
          f"{result['worker_anon_growth_with_dataset_mb']:+.0f} MB with the {dataset_mb:.0f} MB dataset instead of {control_mb:.0f} MB",
          flush=True)
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
