"""The report's "## Data" section: per-split class table, loud cross-split duplicates, file listings, the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ferbench.harness.data.checks import inspect
from ferbench.harness.data.dataset import FER2013_CLASSES, FerDataset
from ferbench.reports.data_section import render_data_section
from ferbench.reports.escaping import md_text

SPLITS = {"train": np.arange(0, 28), "val": np.arange(28, 35), "test": np.arange(35, 42)}


def leaky_dataset() -> FerDataset:
    """42 images, labels i % 7; image 40 (test) copies image 3 (train) with another label; 10 is blank;
    25 unreadable files skipped and 3 resized."""
    images = np.random.default_rng(0).integers(1, 255, (42, 48, 48), dtype=np.uint8)
    images[40], images[10] = images[3], 0
    skipped = [{"path": f"train/angry/{i:03d}.jpg", "reason": "cannot identify image file"} for i in range(25)]
    resized = [f"train/happy/big{i}.jpg" for i in range(3)]
    dataset = FerDataset("leaky", images, np.arange(42, dtype=np.int64) % 7, FER2013_CLASSES,
                         subjects=np.arange(42) % 6, meta={"skipped": skipped, "resized": resized, "format": "folder"})
    dataset.sources = np.array([f"img{i:02d}.png" for i in range(42)])
    return dataset


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG" and 500 <= image.width <= 2000 and 300 <= image.height <= 1000
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10  # bars, text, not a blank canvas


def test_data_section_with_splits_and_a_leak(tmp_path):
    figures = tmp_path / "report" / "figures"
    markdown = render_data_section(inspect(leaky_dataset(), SPLITS), figures)
    assert_png(figures / "class_counts.png")
    lines = markdown.splitlines()
    assert lines[0] == "## Data"
    assert "**leaky** (format `folder`, source `-`): 42 images 48×48, 1 channel(s), 7 classes, 6 distinct subjects." in lines
    assert "![Images per class and split](figures/class_counts.png)" in lines
    assert "| class | all | train | val | test |" in lines
    assert "| angry | 6 (14.3%) | 4 (14.3%) | 1 (14.3%) | 1 (14.3%) |" in lines
    assert "| total | 42 (100.0%) | 28 (100.0%) | 7 (100.0%) | 7 (100.0%) |" in lines
    warning = next(line for line in lines if line.startswith("> **WARNING:**"))
    assert md_text("2 images in 1 group(s)") in warning and md_text("--set data.drop_duplicates=true") in warning
    assert "> **WARNING:** " + md_text("1 cross-split duplicate group(s) carry conflicting labels") in lines
    assert "- **Duplicates across splits: 1 group(s), 2 images (train+test: 1); 1 with conflicting labels**" in lines
    assert "  - 2 images: `img03.png (happy, train)`, `img40.png (surprise, test)`" in lines
    assert "  - `img10.png (happy, train)` value 0" in lines
    assert "- Unreadable files skipped: 25" in lines
    assert "  - `train/angry/019.jpg: cannot identify image file`" in lines
    assert "train/angry/020.jpg" not in markdown and "  - … and 5 more" in lines
    assert "- Files resized to the dataset's image size: 3" in lines and "  - `train/happy/big2.jpg`" in lines


def test_data_section_without_splits_or_problems(tmp_path):
    dataset = leaky_dataset()
    dataset.images[40] = 7  # no more duplicates; 10 and 40 are both constant, but different
    dataset.meta = {}
    markdown = render_data_section(inspect(dataset), tmp_path / "figures")
    assert_png(tmp_path / "figures" / "class_counts.png")
    assert "WARNING" not in markdown and "| class | all |" in markdown
    assert "- Duplicates across splits: not checked (no splits)" in markdown
    assert "- Exact duplicates within the dataset: 0 group(s), 0 images (0 redundant copies)" in markdown
    assert "- Constant (blank) images: 2" in markdown
    assert "- Unreadable files skipped: none" in markdown and "- Files resized to the dataset's image size: none" in markdown
