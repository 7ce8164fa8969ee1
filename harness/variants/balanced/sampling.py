"""Class balancing for the ``balanced`` variants (Moravčík 2021, section 5.1.1).

The thesis picks M ≈ 80% of the largest class (happiness) and samples M images of every class,
so the classes are equal and the small ones repeat images. Here the draw is made afresh every
epoch from the trial's generator (so a resumed trial draws the same images): a class with at
least M images contributes M distinct ones (the large classes are subsampled, differently each
epoch), a smaller class contributes every image ⌊M/n⌋ times plus M mod n distinct extra ones,
so each of its images appears ⌊M/n⌋ or ⌈M/n⌉ times. An epoch then has K·M images.

The class-weighted loss uses sklearn's "balanced" weights, w_c = n / (K · n_c) over the K classes
present in the training set, so that the mean weight per training image is 1.
"""

from __future__ import annotations

import torch


def target_count(class_counts: torch.Tensor, fraction: float) -> int:
    """M = round(fraction × the largest class count), at least 1."""
    return max(1, round(fraction * int(class_counts.max())))


def balanced_epoch_indices(
    indices: torch.Tensor, targets: torch.Tensor, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """The images of one balanced epoch: exactly M per class present among ``targets[indices]``
    (order unspecified; the training loop shuffles)."""
    classes = targets[indices]
    counts = torch.bincount(classes)
    m = target_count(counts, fraction)
    parts = []
    for cls in torch.nonzero(counts).flatten().tolist():
        members = indices[classes == cls]
        n = len(members)
        repeats, extra = divmod(m, n)
        parts += [members] * repeats
        parts.append(members[torch.randperm(n, generator=generator)[:extra]])
    return torch.cat(parts)


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (K · n_c) per class for the training targets; 0 for a class with no training image."""
    counts = torch.bincount(targets, minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()
