"""Studies on real dataset layouts: duplicates dropped from training in preflight, and a CK+
subject-exclusive 10-fold study on the real 48×48 CK+ set (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferbench.harness.study.engine import run_study
from ferbench.harness.data.loaders import load_dataset
from ferbench.harness.study.preflight import run_preflight
from ferbench.harness.spec import load_spec
from ferbench.harness.data.splits import load_splits

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"


def write_csv_with_leaks(path: Path) -> None:
    """70 rows, 10 per class, Usage cycling Training/PublicTest/PrivateTest; rows 3 and 6
    (Training) repeat the pixels of rows 2 and 5 (PrivateTest)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(70, 48 * 48))
    pixels[3], pixels[6] = pixels[2], pixels[5]
    usage = ["Training", "PublicTest", "PrivateTest"]
    rows = [f"{i % 7},{' '.join(map(str, p))},{usage[i % 3]}" for i, p in enumerate(pixels)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("drop", [False, True])
def test_training_copies_of_test_images_are_flagged_or_dropped(tmp_path, drop):
    csv = tmp_path / "fer2013.csv"
    write_csv_with_leaks(csv)
    spec = load_spec("quick", ["data.format=fer2013", f"data.path={csv}", "split.kind=official",
                               f"data.drop_duplicates={str(drop).lower()}", "grid.init=[random]"])
    preflight = run_preflight(spec)
    train = set(preflight.splits[0]["train"].tolist())
    assert (train.isdisjoint({3, 6}) if drop else {3, 6} <= train)
    assert preflight.data_notes == ({"dropped_training_duplicates": {"0": 2}} if drop else {})
    assert len(train) == 24 - 2 * drop  # rows 0, 3, …, 69 are Training


@pytest.mark.slow
@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48×48 set is not at {CKPLUS48}")
def test_ckplus_subject_exclusive_10_fold_study(tmp_path):
    spec = load_spec("quick", [
        "data.format=ckplus", f"data.path={CKPLUS48}", "split.kind=subject_kfold", "split.k=10",
        "grid.backbone=[small_cnn]", "grid.init=[random]", "train.epochs=1", "resources.cpu=1",
        f"run.storage={tmp_path}", "run.name=ckplus10",
    ])
    outcome = run_study(spec)
    assert outcome.statuses == {f"small_cnn_random_baseline_s0_f{fold}": "completed" for fold in range(10)}
    dataset = load_dataset(spec.data)
    folds = load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")
    tests = np.concatenate([folds[fold]["test"] for fold in range(10)])
    assert np.array_equal(np.sort(tests), np.arange(981))  # each image is tested in exactly one fold
    for split in folds.values():
        test_subjects = set(dataset.subjects[split["test"]])
        assert not test_subjects & set(dataset.subjects[np.concatenate([split["train"], split["val"]])])
    report = (outcome.report_dir / "report.md").read_text()
    assert "981 images 48×48" in report and "118 distinct subjects" in report and "subject-exclusive 10-fold" in report
