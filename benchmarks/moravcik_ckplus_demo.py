"""A small FER2013-format → CK+ run of the Moravčík thesis's pipeline, end to end, timed.

1. Writes a FER2013-format CSV (``emotion,pixels,Usage``, 48×48 grey, Training / PrivateTest / PublicTest) from
   SynthFER, standing in for a researcher's ``fer2013.csv``.
2. ``ferbench run moravcik2021`` on it, cut to the final CNN, one seed and a few epochs, with CK+ as an extra test
   set (contempt read as happy): the thesis's direct evaluation (§6.4).
3. ``ferbench run moravcik2021_ckplus`` on the real CK+ set, initialised from step 2's arm: the thesis's two
   transfers (output layer only; new fully connected layers over frozen convolutions).

Prints each step's wall time and the scores. Replace the CSV by your ``fer2013.csv`` (``--fer2013``) and raise the
epochs for the thesis's numbers; the SynthFER-trained network says nothing about CK+ faces.

    python benchmarks/moravcik_ckplus_demo.py --ckplus /data/CK+48 [--out DIR] [--images 3000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

USAGES = ("Training", "PrivateTest", "PublicTest")
SOURCE_ARM = "moravcik_final_random_baseline_enabled-true_s0"


def write_fer2013_csv(path: Path, num_images: int, seed: int = 0) -> Path:
    """SynthFER's 48×48 faces as a FER2013 CSV: 80% Training, 10% PrivateTest, 10% PublicTest (drawn with ``seed``)."""
    from ferbench.harness.data.synthfer import generate_synthfer

    data = generate_synthfer(num_images=num_images, image_size=48, seed=seed)
    usage = np.random.default_rng(seed).choice(len(USAGES), size=num_images, p=[0.8, 0.1, 0.1])
    frame = pd.DataFrame({"emotion": data.labels, "pixels": [" ".join(map(str, image.ravel())) for image in data.images],
                          "Usage": [USAGES[u] for u in usage]})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def ferbench_run(study: str, settings: list[str]) -> float:
    """``ferbench run STUDY --set …`` in a child process; its wall seconds (a failure stops the demo)."""
    command = [sys.executable, "-m", "ferbench", "run", study, *[arg for s in settings for arg in ("--set", s)]]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def experiment(storage: Path, name: str) -> Path:
    (folder,) = [p for p in storage.glob(f"{name}*") if (p / "ferbench").is_dir()]
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckplus", type=Path, required=True, help="the 48×48 CK+ folder (class folders)")
    parser.add_argument("--fer2013", type=Path, help="a FER2013 CSV to use instead of the SynthFER one")
    parser.add_argument("--out", type=Path, default=Path("moravcik_demo"), help="results folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=3000, help="SynthFER images in the CSV (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="FER2013 epochs (default: %(default)s)")
    parser.add_argument("--transfer-epochs", type=int, default=5, help="CK+ epochs (default: %(default)s)")
    parser.add_argument("--cpu", type=int, default=2, help="CPUs per trial (default: %(default)s)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    csv = args.fer2013 or write_fer2013_csv(out / "fer2013.csv", args.images)
    machine = [f"resources.cpu={args.cpu}", "resources.gpu=0", f"run.storage={out}", "grid.seed=[0]"]
    first = ferbench_run("moravcik2021", [
        *machine, f"data.path={csv}", "grid.backbone=[moravcik_final]", "grid.variant=[baseline]",
        f"train.epochs={args.epochs}", "run.name=fer2013", "report.window=1",
        f"eval.datasets=[{{name: ckplus, data: {{format: ckplus, path: {args.ckplus}}}, map: {{contempt: happy}}}}]",
    ])
    source = experiment(out, "fer2013")
    second = ferbench_run("moravcik2021_ckplus", [
        *machine, f"data.path={args.ckplus}", f"weights.files.moravcik_final={source}/{SOURCE_ARM}",
        f"train.epochs={args.transfer_epochs}", "run.name=ckplus", "report.window=1",
    ])
    trials = pd.read_csv(source / "report" / "tables" / "trials.csv").set_index("arm_id").loc[SOURCE_ARM]
    transfer = pd.read_csv(experiment(out, "ckplus") / "report" / "tables" / "trials.csv")
    print(f"\nFER2013-format study: {first:.0f} s; test acc {trials['test_acc']:.3f}, "
          f"CK+ directly {trials['cross_ckplus_acc']:.3f} (macro F1 {trials['cross_ckplus_macro_f1']:.3f})")
    print(f"CK+ transfer study: {second:.0f} s")
    for _, row in transfer.iterrows():
        print(f"  {row['arm_id']}: test acc {row['test_acc']:.3f}, macro F1 {row['test_macro_f1']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
