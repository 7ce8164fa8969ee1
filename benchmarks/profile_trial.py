"""Where a trial's time goes, by py-spy: ``python benchmarks/profile_trial.py [BACKBONE SIZE IMAGES]``.

Runs the overhead section's trial (SynthFER at the input size, no augmentation, fp32, 2 threads)
for more epochs, samples its Ray worker with py-spy once it trains, past its first epoch, and prints the share of
samples in each step of ``train_one_epoch`` (model forward, backward, optimizer, loss, and the
harness's own per-batch work: the uint8 gather with the input adapter, the accuracy and loss
bookkeeping) and outside it (evaluation, checkpoints, waiting). The shares come from one window
of one process, so a VM's drifting speed reaches every line alike: this resolves a harness cost
that the harness/bare ratio, measured minutes apart, cannot. Needs ``pip install py-spy``.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_study_child, study_overrides  # noqa: E402
from benchmarks.overhead import BATCH  # noqa: E402

TRIAL_TITLE = "ray::ImplicitFunc.train"
# A line of train_one_epoch → its step, by what the line does (not its number, which moves).
STEPS = (("model(", "model forward"), (".backward()", "backward"), ("optimizer.", "optimizer"),
         ("task.loss(", "loss"), ("adapter(", "harness: gather + input adapter"),
         ("random_affine", "harness: augmentation"), ("labels[", "harness: gather + input adapter"))


def train_one_epoch_steps() -> dict[int, str]:
    """Line number → step for every line of ``train_one_epoch``; other lines are bookkeeping."""
    from ferbench.harness.train.loop import train_one_epoch

    source, first = inspect.getsourcelines(train_one_epoch)
    return {first + i: next((step for key, step in STEPS if key in line), "harness: bookkeeping")
            for i, line in enumerate(source)}


def classify(stack: str, steps: dict[int, str]) -> str:
    """The step a sampled stack (py-spy's raw format, outermost first) was in."""
    inner = [frame for frame in stack.split(";") if "harness/train/loop.py" in frame]
    if inner:
        found = re.search(r"^(\w+) \(.*loop\.py:(\d+)\)", inner[-1])
        if found and found.group(1) == "train_one_epoch":
            return "train: " + steps.get(int(found.group(2)), "harness: bookkeeping")
        return "evaluation" if found and found.group(1) == "predict" else "other harness code"
    if "torch/serialization.py" in stack or "pyarrow/fs.py" in stack or "_save_checkpoint" in stack:
        return "checkpoint (save + copy to storage)"
    return "other (Ray, waiting)"


def profile(backbone: str, size: int, train_images: int, *, epochs: int = 8, seconds: float = 12, warmup_s: float = 4) -> dict:
    if shutil.which("py-spy") is None:
        raise SystemExit("profile_trial: py-spy is not installed; run `pip install py-spy` and try again")
    import ray  # noqa: F401  (psutil comes with Ray, on its path once Ray is imported)
    import psutil

    with tempfile.TemporaryDirectory(prefix="ferbench-profile-") as folder:
        raw = Path(folder) / "samples.txt"
        errors: list[str] = []

        def record() -> None:
            me = psutil.Process()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                for proc in me.children(recursive=True):
                    try:
                        title = " ".join(proc.cmdline())
                    except psutil.Error:
                        continue
                    if title.startswith(TRIAL_TITLE):
                        # Building the trial (its model, Adam's import of torch._dynamo) comes first:
                        # wait until the worker trains, then past the first epoch's kernel warm-up.
                        while time.monotonic() < deadline and "train_one_epoch" not in subprocess.run(
                                ["py-spy", "dump", "-p", str(proc.pid)], capture_output=True, text=True).stdout:
                            time.sleep(0.2)
                        time.sleep(warmup_s)
                        done = subprocess.run(["py-spy", "record", "-p", str(proc.pid), "-d", str(int(seconds)), "-r", "50",
                                               "--format", "raw", "-o", str(raw)], capture_output=True, text=True)
                        if done.returncode != 0:
                            errors.append(done.stderr.strip()[-500:])
                        return
                time.sleep(0.2)
            errors.append("the trial's worker never started")

        recorder = threading.Thread(target=record, daemon=True)
        recorder.start()
        child = run_study_child(study_overrides(backbone, num_images=int(train_images / 0.8) + 1, image_size=size, cpu=2,
                                                epochs=epochs, batch_size=BATCH), ray_cpus=2, render_report=False)
        recorder.join()
        if errors or not raw.is_file():
            raise SystemExit(f"profile_trial: py-spy recorded nothing: {errors[0] if errors else 'no output'}"
                             " (on Linux py-spy needs ptrace: run as root or with CAP_SYS_PTRACE)")
        steps, shares = train_one_epoch_steps(), collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            shares[classify(stack, steps)] += int(count)
    total = sum(shares.values())
    training = sum(n for step, n in shares.items() if step.startswith("train: "))
    harness = sum(n for step, n in shares.items() if step.startswith("train: harness"))
    return {"backbone": backbone, "size": size, "train_images": train_images, "samples": total,
            "shares": {step: n / total for step, n in shares.most_common()},
            "harness_share_of_training": harness / training if training else None,
            "train_images_per_s": [float(r["train_images_per_s"]) for r in sorted(child.epochs, key=lambda r: r["epoch"]) if r["epoch"] >= 1]}


def main(argv: list[str]) -> int:
    backbone, size, images = (argv + ["small_cnn", "48", "2048"][len(argv):])[:3]
    if len(argv) > 3 or not (size.isdigit() and images.isdigit()):
        raise SystemExit(f"usage: profile_trial.py [BACKBONE [SIZE [IMAGES]]], SIZE and IMAGES whole numbers "
                         f"(e.g. mobilenet_v1 48 832); got {' '.join(argv)!r}")
    result = profile(backbone, int(size), int(images))
    print(f"{backbone} at {size} px, {images} images per epoch: {result['samples']} samples of the trial's worker")
    for step, share in result["shares"].items():
        print(f"  {share:6.1%}  {step}")
    print(f"harness's own per-batch work: {result['harness_share_of_training']:.2%} of the training loop's samples")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
