"""Splits (harness/data/splits.py): stratified, official, pseudo-labelling, subject k-fold; atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferbench.harness.study.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ferbench.harness.data.dataset import FER2013_CLASSES, FerDataset
from ferbench.harness.spec import SplitSpec, load_spec
from ferbench.harness.data.splits import SPLIT_NAMES, SplitError, load_splits, make_splits, save_splits, stratified_split

RATIOS = (0.7, 0.1, 0.2)
# FER2013-like imbalance: one small class (disgust), 900 images.
COUNTS = np.array([120, 15, 130, 230, 150, 100, 155])


def make_labels(counts=COUNTS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)


def class_counts(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.bincount(labels[indices], minlength=labels.max() + 1)


def assert_partition(splits: dict[str, np.ndarray], n: int) -> None:
    assert set(splits) == set(SPLIT_NAMES)
    joined = np.concatenate([splits[name] for name in SPLIT_NAMES])
    assert len(joined) == n, "splits overlap or miss indices"
    assert np.array_equal(np.sort(joined), np.arange(n))
    for name in SPLIT_NAMES:
        assert np.all(np.diff(splits[name]) > 0), f"{name} indices are not sorted and unique"


def test_same_seed_same_split_other_seed_other_split():
    labels = make_labels()
    first, again = stratified_split(labels, RATIOS, 42), stratified_split(labels, RATIOS, 42)
    other = stratified_split(labels, RATIOS, 43)
    for name in SPLIT_NAMES:
        assert np.array_equal(first[name], again[name])
    assert not all(np.array_equal(first[name], other[name]) for name in SPLIT_NAMES)
    assert not np.array_equal(first["test"], other["test"])


@pytest.mark.parametrize("ratios", [RATIOS, (0.8, 0.1, 0.1), (0.5, 0.25, 0.25)])
@pytest.mark.parametrize("seed", [0, 42])
def test_splits_partition_indices_with_ratio_sizes(ratios, seed):
    labels = make_labels(seed=seed)
    n = len(labels)
    splits = stratified_split(labels, ratios, seed)
    assert_partition(splits, n)
    for name, ratio in zip(SPLIT_NAMES, ratios):
        # Up to rounding; the two-stage cut rounds twice (test, then val), so train can be off by > 1.
        assert abs(len(splits[name]) - ratio * n) <= 1.5, (name, len(splits[name]), ratio * n)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_splits_are_stratified(seed):
    labels = make_labels(seed=seed)
    splits = stratified_split(labels, RATIOS, seed)
    overall = COUNTS / COUNTS.sum()
    for name, ratio in zip(SPLIT_NAMES, RATIOS):
        counts = class_counts(labels, splits[name])
        # Per class, the count is the ratio's share of the class up to rounding. sklearn rounds the
        # test size up and rounds once per stage, so a class can be off by slightly more than 1.
        assert np.all(np.abs(counts - ratio * COUNTS) <= 1.5), (name, counts, ratio * COUNTS)
        # So each split's class proportions follow the overall ones.
        assert np.allclose(counts / counts.sum(), overall, atol=1.5 / counts.sum()), name
        assert np.all(counts > 0), f"{name} lost a class"


def test_rare_class_of_two_images_still_splits():
    counts = np.array([400, 300, 200, 150, 100, 80, 2])
    labels = make_labels(counts)
    for seed in range(5):
        splits = stratified_split(labels, RATIOS, seed)
        assert_partition(splits, len(labels))
        assert sum(class_counts(labels, splits[name])[6] for name in SPLIT_NAMES) == 2
        for name, ratio in zip(SPLIT_NAMES, RATIOS):
            assert abs(len(splits[name]) - ratio * len(labels)) <= 1.5


def test_rare_class_does_not_unstratify_the_others():
    counts = np.array([400, 300, 200, 150, 100, 80, 2])
    labels = make_labels(counts)
    for seed in range(5):
        splits = stratified_split(labels, RATIOS, seed)
        assert class_counts(labels, splits["train"])[6] >= 1, f"seed {seed}: rare class missing from train"
        for name, ratio in zip(SPLIT_NAMES, RATIOS):
            common = class_counts(labels, splits[name])[:6]
            assert np.all(np.abs(common - ratio * counts[:6]) <= 1.5), (seed, name, common)


def test_save_and_load_splits_round_trip(tmp_path):
    labels = make_labels()
    folds = {0: stratified_split(labels, RATIOS, 42), 3: stratified_split(labels, RATIOS, 7)}
    folds[3]["unlabeled"] = folds[3]["train"][:5]
    path = tmp_path / "experiment" / "ferbench" / "splits.npz"
    save_splits(path, folds)
    loaded = load_splits(path)
    assert set(loaded) == {0, 3} and set(loaded[3]) == {*SPLIT_NAMES, "unlabeled"}
    for fold, split in folds.items():
        for name, indices in split.items():
            assert loaded[fold][name].dtype == np.int64
            assert np.array_equal(loaded[fold][name], indices)
    assert [p.name for p in path.parent.iterdir()] == ["splits.npz"]


def test_single_split_files_of_earlier_versions_load_as_fold_0(tmp_path):
    splits = stratified_split(make_labels(), RATIOS, 42)
    np.savez(tmp_path / "splits.npz", **splits)
    loaded = load_splits(tmp_path / "splits.npz")
    assert set(loaded) == {0} and all(np.array_equal(loaded[0][n], splits[n]) for n in SPLIT_NAMES)


def test_save_splits_with_a_missing_split_keeps_the_old_file(tmp_path):
    path = tmp_path / "splits.npz"
    splits = stratified_split(make_labels(), RATIOS, 0)
    save_splits(path, {0: splits})
    before = path.read_bytes()
    with pytest.raises(KeyError, match="fold 0 has no test part"):
        save_splits(path, {0: {"train": splits["train"], "val": splits["val"]}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["splits.npz"]


# --- official splits, the pseudo-labelling cut and subject-exclusive k-fold ------------------


def dataset_with(labels: np.ndarray, official=None, subjects=None) -> FerDataset:
    meta = {} if official is None else {"official_split": np.asarray(official)}
    images = np.zeros((len(labels), 4, 4), dtype=np.uint8)
    return FerDataset("fixture", images, labels, FER2013_CLASSES, subjects=subjects, meta=meta)


def test_fer2013_official_split_reports_the_chosen_test_part():
    usage = np.array(["Training"] * 6 + ["PublicTest"] * 2 + ["PrivateTest"] * 3)
    data = dataset_with(np.arange(11) % 7, official=usage)
    [private] = make_splits(data, SplitSpec(kind="official"))
    assert private["train"].tolist() == list(range(6))
    assert private["val"].tolist() == [6, 7] and private["test"].tolist() == [8, 9, 10]
    [public] = make_splits(data, SplitSpec(kind="official", test="PublicTest"))
    assert public["val"].tolist() == [8, 9, 10] and public["test"].tolist() == [6, 7]


def test_arsirii_pseudo_labelling_split_of_raf_db_sizes():
    # RAF-DB basic: 12,271 training and 3,068 test images; Arsirii cut 0.1 unlabeled, then 0.2 val.
    labels = make_labels(np.array([1290, 281, 717, 4772, 1982, 705, 2524]), seed=1)
    test_labels = make_labels(np.array([329, 74, 160, 1185, 478, 162, 680]), seed=2)
    data = dataset_with(np.concatenate([labels, test_labels]), official=["train"] * len(labels) + ["test"] * len(test_labels))
    [split] = make_splits(data, SplitSpec(kind="official", unlabeled_fraction=0.1, val_fraction=0.2))
    assert {name: len(idx) for name, idx in split.items()} == {"train": 8834, "val": 2209, "test": 3068, "unlabeled": 1228}
    assert np.array_equal(np.sort(np.concatenate([split[n] for n in ("train", "val", "unlabeled")])), np.arange(12271))
    for name in ("val", "unlabeled"):  # stratified: class shares within a point of train's
        shares = class_counts(data.labels, split[name]) / len(split[name])
        assert np.abs(shares - class_counts(data.labels, split["train"]) / 8834).max() < 0.01


def test_official_split_needs_one():
    with pytest.raises(SplitError, match="no official split; use --set split.kind=stratified"):
        make_splits(dataset_with(make_labels()), SplitSpec(kind="official"))


def test_subject_kfold_is_subject_exclusive_and_covers_every_image_once():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(60), 8)
    labels = rng.integers(0, 7, len(subjects))
    data = dataset_with(labels, subjects=subjects)
    folds = make_splits(data, SplitSpec(kind="subject_kfold", k=5, val_fraction=0.2))
    assert len(folds) == 5
    tests = np.concatenate([fold["test"] for fold in folds])
    assert np.array_equal(np.sort(tests), np.arange(len(labels)))  # every image tested exactly once
    for fold in folds:
        parts = [set(subjects[fold[name]]) for name in SPLIT_NAMES]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sum(len(fold[name]) for name in SPLIT_NAMES) == len(labels)
    chosen = make_splits(data, SplitSpec(kind="subject_kfold", k=5, val_fraction=0.2, folds=[1, 3]))
    assert [c["test"].tolist() for c in chosen] == [folds[1]["test"].tolist(), folds[3]["test"].tolist()]


def test_subject_kfold_needs_subjects_and_enough_of_them():
    with pytest.raises(SplitError, match="needs subject ids"):
        make_splits(dataset_with(make_labels()), SplitSpec(kind="subject_kfold"))
    with pytest.raises(SplitError, match="split.k: 10 subject-exclusive folds need more than 10 subjects; fixture has 4"):
        make_splits(dataset_with(np.arange(40) % 7, subjects=np.arange(40) % 4), SplitSpec(kind="subject_kfold", k=10))


def test_kfold_studies_get_a_fold_axis():
    spec = load_spec("quick", ["split.kind=subject_kfold", "split.k=5", "split.folds=[0, 2]", "grid.backbone=[small_cnn]",
                               "grid.init=[random]"])
    assert [arm["arm_id"] for arm in spec.arms()] == ["small_cnn_random_baseline_s0_f0", "small_cnn_random_baseline_s0_f2"]
    assert "fold" not in load_spec("quick").arms()[0]


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "er" / "manifest.json"
    atomic_write_json(path, {"a": 1, "when": tmp_path})  # default=str serialises the Path
    assert json.loads(path.read_text()) == {"a": 1, "when": str(tmp_path)}
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    atomic_write_bytes(path, b"\x00third")
    assert path.read_bytes() == b"\x00third"
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_failure_while_writing_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "grid.json"
    atomic_write_json(path, {"arms": [1, 2, 3]})
    before = path.read_bytes()
    # The temp file exists when the write fails (a str where bytes are needed fails inside write()).
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"]


def test_failure_at_rename_removes_temp_and_keeps_target(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "keep.md").write_text("old")
    # os.replace cannot put a file over a non-empty directory: the data is written, the rename fails.
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert (target / "keep.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("bad", [
    {("tuple", "key"): 1},  # default=str does not apply to keys
    "circular",
])
def test_unserialisable_json_keeps_old_file(tmp_path, bad):
    if bad == "circular":
        bad = {"x": []}
        bad["x"].append(bad)
    path = tmp_path / "trials.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises((TypeError, ValueError)):
        atomic_write_json(path, bad)
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["trials.json"]
