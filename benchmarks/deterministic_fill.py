"""What torch's ``fill_uninitialized_memory`` costs a deterministic CPU trial:
``python benchmarks/deterministic_fill.py``.

With ``torch.use_deterministic_algorithms(True)`` torch fills every new tensor with NaN unless
``torch.utils.deterministic.fill_uninitialized_memory`` is off; trials turn it off
(``ferbench.harness.train.performance.apply_process_settings``). This times ``train_one_epoch`` both ways, in
turn, on the same process, same model and data, and checks that the numbers are identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import pin_allocator  # noqa: E402  (the allocator pinned as benchmarks/run.py pins it)

if __name__ == "__main__":
    pin_allocator()

import torch  # noqa: E402

from ferbench.backbones import create_backbone, get_backbone_info  # noqa: E402
from ferbench.harness.train.augment import InputAdapter  # noqa: E402
from ferbench.harness.train.loop import train_one_epoch  # noqa: E402

CASES = [("small_cnn", 48, 512), ("mobilenet_v1", 48, 512), ("resnet50", 48, 256)]


def epoch(backbone: str, size: int, images: int, fill: bool) -> tuple[float, float]:
    """(images/s of a second epoch, its loss) with deterministic kernels and the fill on or off."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.manual_seed(0)
    info = get_backbone_info(backbone)
    model = create_backbone(backbone, 7)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (images, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 7, (images,), generator=torch.Generator().manual_seed(2))
    kwargs = dict(batch_size=64, adapter=InputAdapter(size, info.in_chans, info.channel_order, info.mean, info.std),
                  augment=None, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    train_one_epoch(model, optimizer, data, labels, torch.arange(images), **kwargs)  # warm-up
    stats = train_one_epoch(model, optimizer, data, labels, torch.arange(images), **kwargs)
    return stats.images_per_s, stats.loss


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'backbone':<14}{'fill on':>10}{'fill off':>10}{'gain':>8}  identical")
    for backbone, size, images in CASES:
        on, off = [], []
        for _ in range(2):  # in turn, so drifts of the machine hit both
            on.append(epoch(backbone, size, images, True))
            off.append(epoch(backbone, size, images, False))
        best_on, best_off = max(r for r, _ in on), max(r for r, _ in off)
        same = all(a[1] == b[1] for a, b in zip(on, off))
        print(f"{backbone:<14}{best_on:>10.1f}{best_off:>10.1f}{best_off / best_on - 1:>8.1%}  {same}", flush=True)


if __name__ == "__main__":
    main()
