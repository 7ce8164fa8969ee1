"""The reference a trial is measured against: the plainest PyTorch training loop.

Same model (``create_backbone``), optimizer (Adam), batch size, input size, threads, device and
precision as the trial, on random tensors already in the model's input form, so that only the
model's forward, backward and optimizer step are timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.train.performance import TRIAL_WORKER_ENV
from ferbench.harness.train.loop import batch_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BareLoop:
    """The model, Adam and random tensors of one configuration, warmed up by one untimed pass: a
    trial's later epochs follow its first (oneDNN builds its kernels on the first call of each batch
    shape, and a fresh process's first touches of memory are slow)."""

    def __init__(self, backbone: str, *, size: int, train_images: int, batch_size: int = 64, threads: int = 2,
                 lr: float = 1e-3, num_classes: int = 7, seed: int = 0) -> None:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        info = get_backbone_info(backbone)
        self.model = create_backbone(backbone, num_classes)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.images = torch.randn(train_images, info.in_chans, size, size)
        self.labels = torch.randint(0, num_classes, (train_images,))
        self.bounds = batch_bounds(train_images, batch_size)
        self.model.train()
        self._one_pass()

    def _one_pass(self) -> None:
        for lo, hi in self.bounds:
            loss = F.cross_entropy(self.model(self.images[lo:hi]), self.labels[lo:hi])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def timed_passes(self, passes: int) -> list[float]:
        """Training images/s of each of ``passes`` passes over the images."""
        rates = []
        for _ in range(passes):
            start = time.perf_counter()
            self._one_pass()
            rates.append(len(self.images) / (time.perf_counter() - start))
        return rates


def bare_images_per_s(backbone: str, *, epochs: int = 1, **config) -> dict:
    """Training images/s of the bare loop: the best of ``epochs`` timed passes after the warm-up pass."""
    loop = BareLoop(backbone, **config)
    rates = loop.timed_passes(epochs)
    return {"images_per_s": max(rates), "epochs_images_per_s": rates, "images": len(loop.images)}


def _worker_environment() -> dict:
    return {**os.environ, **TRIAL_WORKER_ENV, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def bare_in_fresh_process(backbone: str, **kwargs) -> dict:
    """``bare_images_per_s`` in a new Python with a trial worker's environment (its allocator
    settings): the speed of a loop depends on what its process did before, and a trial's worker
    did nothing but import the harness."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.bare_loop", json.dumps({"backbone": backbone, **kwargs})],
                          capture_output=True, text=True, cwd=ROOT, env=_worker_environment())
    if done.returncode != 0:
        raise RuntimeError(f"bare loop of {backbone} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


class BareLoopProcess:
    """A ``BareLoop`` in a fresh process (a trial worker's environment), kept warm between calls:
    the passes right before a trial's study and those right after it come from the same process,
    so the two sides of the bracket differ only in when they ran."""

    def __init__(self, backbone: str, **config) -> None:
        self.backbone = backbone
        self._stderr = tempfile.TemporaryFile(mode="w+")
        request = json.dumps({"backbone": backbone, "serve": True, **config})
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_loop", request], cwd=ROOT,
                                      env=_worker_environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True)
        self._reply()  # built and warmed up

    def _reply(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"bare loop of {self.backbone} failed (exit {self._proc.returncode}):\n{self._stderr.read()[-3000:]}")
        return json.loads(line)

    def timed_passes(self, passes: int) -> list[float]:
        self._proc.stdin.write(f"{passes}\n")
        self._proc.stdin.flush()
        return self._reply()["epochs_images_per_s"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        self._stderr.close()

    def __enter__(self) -> "BareLoopProcess":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _serve(request: dict) -> None:
    """Build and warm up, say so, then answer each line of stdin (a number of passes) with their rates."""
    loop = BareLoop(request.pop("backbone"), **request)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps({"epochs_images_per_s": loop.timed_passes(int(line))}), flush=True)


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    if request.pop("serve", False):
        _serve(request)
    else:
        print(json.dumps(bare_images_per_s(request.pop("backbone"), **request)))
