"""Shared pieces of the benchmarks: the machine, study overrides, a study run in a child process,
and the targets.

Each study runs in its own Python process (``benchmarks/study_child.py``): a fresh Ray per study, so
one measurement cannot inherit another's workers, and the child's own clock and memory sampler see
exactly one study.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "benchmarks" / "study_child.py"

# glibc raises its threshold for serving large blocks from fresh mappings as a process frees
# memory (up to 32 MB), so the page faults a training step pays depend on what the process did
# before: ±15% between a trial and the bare loop on a whim. Pinned at the values glibc ends up at,
# for a benchmark process and every process it starts (Ray's included).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def pin_allocator() -> None:
    """Restart this script with ``ALLOCATOR_ENV`` unless it has it: glibc reads it when a process starts."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, memory, GPU, library versions."""
    import ray  # psutil comes with Ray (on its path once Ray is imported)
    import psutil
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def study_overrides(
    backbone: str | list[str],
    *,
    num_images: int | None,
    image_size: int = 48,
    epochs: int = 2,
    seeds: list[int] | None = None,
    cpu: float = 2,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    batch_size: int = 64,
    augment: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """``--set`` overrides of the built-in quick study for a baseline-only benchmark grid on SynthFER:
    random init (no weights), no augmentation (measured separately), input size = data size."""
    backbones = backbone if isinstance(backbone, list) else [backbone]
    return [
        f"grid.backbone={json.dumps(backbones)}", "grid.init=[random]", "grid.variant=[baseline]",
        f"grid.seed={json.dumps(seeds or [0])}", "grid.exclude=[]",
        *([f"data.num_images={num_images}"] if num_images else []), f"data.image_size={image_size}",
        f"split.ratios={json.dumps(list(ratios))}",
        f"train.epochs={epochs}", f"train.batch_size={batch_size}", f"train.augment.enabled={str(augment).lower()}",
        "train.input_size=data", "train.lr=1e-3", f"resources.cpu={cpu}", "run.max_failures=0",
        *(extra or []),
    ]


@dataclass
class ChildResult:
    """What ``study_child.py`` measured: phase timings, every epoch row, memory samples."""

    timings: dict
    epochs: list[dict]
    memory: dict
    returncode: int
    log_tail: str


def run_study_child(
    overrides: list[str], *, ray_cpus: int, sample_memory: bool = False, timeout_s: float = 600,
    workdir: Path | None = None, render_report: bool = True,
) -> ChildResult:
    """Run the quick study with ``overrides`` in a fresh Python process with a private Ray of ``ray_cpus``
    (``render_report=False``: the study's report is not rendered, for measurements that do not use it)."""
    with tempfile.TemporaryDirectory(prefix="ferbench-bench-", dir=workdir) as folder:
        out = Path(folder) / "result.json"
        request = {"overrides": [*overrides, f"run.storage={folder}/results"], "ray_cpus": ray_cpus,
                   "sample_memory": sample_memory, "render_report": render_report, "out": str(out)}
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local",
               "FERBENCH_CACHE_DIR": os.environ.get("FERBENCH_CACHE_DIR", str(Path(folder) / "cache")),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(CHILD), json.dumps(request)], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        log = (proc.stdout + proc.stderr)[-3000:]
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"benchmark study failed (exit {proc.returncode}):\n{log}")
        data = json.loads(out.read_text())
    return ChildResult(data["timings"], data["epochs"], data.get("memory", {}), proc.returncode, log)


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``value >= bound`` (``at_least``) or ``value <= bound``."""

    bound: float
    at_least: bool

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}"


def verdict(value: float | None, target: Target | None) -> str:
    if target is None or value is None:
        return ""
    return "met" if target.met(value) else "MISSED"
