"""How the pseudo_label variant prepares data in preflight: its external unlabeled pool.

``pseudo_label.unlabeled_path`` (a folder of images or a CSV) is checked with the other cheap checks
and read, in the dataset's image form, after the dataset (``ferbench.harness.data.unlabeled_pool``).
Without it the pool is the held-out ``split.unlabeled_fraction`` of train, made by the splits.
"""

from __future__ import annotations

from ferbench.harness.data.unlabeled_pool import UnlabeledPool, check_pool_path, load_unlabeled_pool


def check_inputs(spec) -> list[str]:
    """Preflight's cheap stage: the external pool's path exists and opens."""
    return check_pool_path(spec.pseudo_label.unlabeled_path) if spec.pseudo_label.unlabeled_path is not None else []


def unlabeled_pool(spec, dataset) -> UnlabeledPool | None:
    """Preflight's data stage: the external pool in the dataset's image form, or None (the held-out share)."""
    if spec.pseudo_label.unlabeled_path is None:
        return None
    return load_unlabeled_pool(spec.pseudo_label.unlabeled_path, image_shape=dataset.images.shape[1:], strict=spec.data.strict)
