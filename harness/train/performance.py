"""How a trial executes on its device: threads, precision, memory format, kernel selection, where
the dataset lives, and the evaluation batch size.

The spec's ``train`` switches may say ``auto``; they are resolved here against the trial's device,
once, so every pass of a trial runs the same way. ``auto`` keeps CPU runs in fp32 with
deterministic kernels (identical reruns with the same seed) and gives CUDA the fast path: bf16
autocast, channels_last, cuDNN autotuning, the uint8 dataset resident on the GPU, larger
evaluation batches.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

CPU_EVAL_BATCH = 256
CUDA_EVAL_BATCH = 1024
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# glibc gives each new thread an allocator arena of its own, and Ray Tune trains a function
# trainable in a thread of its worker: there the same training loop ran 10-13% slower than in the
# main thread (resnet50 at 96 px on 2 cores; the arena's heaps are trimmed and faulted in again
# every step). One arena per worker gives the training thread the main thread's speed. glibc reads
# this when a process starts, so Ray sets it in every worker's environment at launch.
TRIAL_WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


@dataclass(frozen=True)
class Execution:
    """The resolved switches of one trial (see ``resolve_execution``)."""

    device: torch.device
    threads: int
    precision: str  # "fp32" | "bf16"
    channels_last: bool
    deterministic: bool
    cudnn_benchmark: bool
    data_on_device: bool
    eval_batch_size: int

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the trial's precision on its device (nothing for fp32)."""
        return autocast(self.device, self.autocast_dtype)

    def as_dict(self) -> dict:
        return {"device": self.device.type, "threads": self.threads, "precision": self.precision,
                "channels_last": self.channels_last, "deterministic": self.deterministic,
                "cudnn_benchmark": self.cudnn_benchmark, "data_on_device": self.data_on_device,
                "eval_batch_size": self.eval_batch_size}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def select_device(gpus: float) -> torch.device:
    """CUDA when the trial reserved a GPU (or a fraction of one) and one is visible, else the CPU."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def _switch(value: bool | str, auto: bool) -> bool:
    return auto if value == "auto" else bool(value)


def resolve_execution(train, resources, device: torch.device | None = None) -> Execution:
    """``train`` (TrainSpec) and ``resources`` (ResourcesSpec) switches for ``device`` (default:
    ``select_device``). Explicit values win over ``auto``; cuDNN autotuning is never on with
    deterministic kernels, since the algorithm it picks may differ from run to run."""
    device = device or select_device(resources.gpu)
    cuda = device.type == "cuda"
    deterministic = _switch(train.deterministic, auto=not cuda)
    return Execution(
        device=device,
        threads=max(1, int(resources.cpu)),
        precision=("bf16" if cuda else "fp32") if train.precision == "auto" else train.precision,
        channels_last=_switch(train.channels_last, auto=cuda),
        deterministic=deterministic,
        cudnn_benchmark=_switch(train.cudnn_benchmark, auto=cuda and not deterministic),
        data_on_device=_switch(train.data_on_device, auto=cuda),
        eval_batch_size=(CUDA_EVAL_BATCH if cuda else CPU_EVAL_BATCH) if train.eval_batch_size == "auto" else int(train.eval_batch_size),
    )


def apply_process_settings(execution: Execution) -> None:
    """Set the process-wide torch state a trial relies on. Every switch is set both ways: a Ray
    worker may run several trials one after another.

    Deterministic mode keeps torch's deterministic kernels but not its debugging aid of filling
    every new tensor with NaN (``fill_uninitialized_memory``): every kernel the trial runs writes
    its whole output, so the fill changes no number, and it cost 7% of MobileNet's training
    throughput on a 2-core CPU (thousands of ``aten::fill_`` calls per step).
    """
    torch.set_num_threads(execution.threads)
    if execution.deterministic and execution.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism
    torch.use_deterministic_algorithms(execution.deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = execution.cudnn_benchmark
