"""Dataset loaders by name: each turns a ``DataSpec`` into a validated ``FerDataset``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from harness.dataset import FER2013_CLASSES, FerDataset


class DataError(ValueError):
    """A dataset cannot be read; ``str()`` names the file / row and the fix."""


def load_synthfer(spec) -> FerDataset:
    from harness.synthfer import generate_synthfer

    return generate_synthfer(
        num_images=spec.num_images, image_size=spec.image_size, seed=spec.seed, label_noise=spec.label_noise
    )


def load_fer2013_csv(spec) -> FerDataset:
    """FER2013 as distributed (``emotion,pixels,Usage``; also icml_face_data.csv's spaced header)."""
    import pandas as pd

    if not spec.path:
        raise DataError("data.path: FER2013 needs the CSV file, e.g. --set data.path=/data/fer2013.csv")
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist; point it at fer2013.csv")
    try:
        frame = pd.read_csv(path, dtype={"pixels": str}, skipinitialspace=True)
    except Exception as err:  # pandas raises many parser error types
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = {"emotion", "pixels"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected emotion,pixels,Usage")
    labels = pd.to_numeric(frame["emotion"], errors="coerce")
    bad = labels.isna() | (labels < 0) | (labels >= len(FER2013_CLASSES))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {row + 2}: emotion {str(frame['emotion'].iloc[row]).strip()} is not an integer 0..6 (FER2013's class order: 0 angry … 6 neutral)")
    pixel_rows = frame["pixels"].fillna("").str.split()
    lengths = pixel_rows.str.len().to_numpy()
    side = int(round(np.sqrt(lengths.max()))) if len(lengths) else 0
    wrong = np.flatnonzero(lengths != side * side)
    if side == 0 or len(wrong):
        row = int(wrong[0]) if len(wrong) else 0
        raise DataError(f"{path}: row {row + 2}: {lengths[row]} pixel values, expected {side * side} (a square image)")
    images = np.array(pixel_rows.tolist(), dtype=np.int64)
    if images.min() < 0 or images.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    usage = frame["Usage"].astype(str).to_numpy() if "Usage" in frame.columns else None
    return FerDataset(
        name="fer2013",
        images=images.astype(np.uint8).reshape(-1, side, side),
        labels=labels.to_numpy(dtype=np.int64),
        class_names=FER2013_CLASSES,
        meta={"source": str(path.resolve()), "usage": usage},
    )


DATASETS: dict[str, Callable[..., FerDataset]] = {
    "synthfer": load_synthfer,
    "fer2013": load_fer2013_csv,
}


def load_dataset(spec) -> FerDataset:
    return DATASETS[spec.format](spec)
