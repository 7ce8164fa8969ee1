"""Leakage and quality checks: planted duplicates, blank images and conflicting labels are found exactly."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ferbench.harness.data.checks import (
    class_counts_table,
    constant_images,
    cross_split_duplicates,
    duplicate_training_indices,
    exact_duplicates,
    inspect,
)
from ferbench.harness.data.dataset import FER2013_CLASSES, FerDataset

SPLITS = {"train": np.arange(0, 30), "val": np.arange(30, 40), "test": np.arange(40, 50)}


def random_images(n: int, shape: tuple[int, ...] = (48, 48), seed: int = 0) -> np.ndarray:
    """Distinct, non-constant images (values 1..254, so a planted 0 or 255 image is the only blank one)."""
    return np.random.default_rng(seed).integers(1, 255, (n, *shape), dtype=np.uint8)


def planted(shape: tuple[int, ...] = (48, 48)) -> FerDataset:
    """50 images with known problems (indices refer to SPLITS):
    3 = 7 = 25 within train; 12 (train, happy) = 45 (test, sad); 33 (val) = 44 (test), same label;
    28 (train) = 35 (val); 5 and 9 blank; 20 and 21 differ in one pixel only."""
    images = random_images(50, shape)
    for copy, original in ((7, 3), (25, 3), (45, 12), (44, 33), (35, 28)):
        images[copy] = images[original]
    images[5], images[9] = 0, 255
    images[21] = images[20]
    images[21].flat[100] = images[20].flat[100] + 1
    labels = np.arange(50, dtype=np.int64) % 7
    labels[[12, 45]] = [3, 4]
    labels[[33, 44]] = [6, 6]
    dataset = FerDataset("planted", images, labels, FER2013_CLASSES, subjects=np.arange(50) // 5,
                         meta={"skipped": [{"path": "bad.png", "reason": "not an image"}], "resized": ["big.png"]})
    dataset.sources = np.array([f"img{i:02d}.png" for i in range(50)])
    return dataset


def groups_as_lists(groups) -> list[list[int]]:
    return [list(map(int, group)) for group in groups]


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 3)])
def test_exact_duplicates_are_the_planted_groups(shape):
    groups = exact_duplicates(planted(shape).images)
    assert groups_as_lists(groups) == [[3, 7, 25], [12, 45], [28, 35], [33, 44]]
    assert all(group.dtype == np.int64 for group in groups)


def test_exact_duplicates_agree_with_grouping_by_bytes_on_fer2013_size():
    images = random_images(35_887)
    images[30_000:30_005] = images[17]
    images[35_886] = images[0]
    images[1000:1003] = 0  # FER2013 has blank images, all identical
    start = time.perf_counter()
    groups = exact_duplicates(images)
    elapsed = time.perf_counter() - start
    by_bytes: dict[bytes, list[int]] = {}
    for i, image in enumerate(images):
        by_bytes.setdefault(image.tobytes(), []).append(i)
    assert groups_as_lists(groups) == sorted(g for g in by_bytes.values() if len(g) > 1)
    assert groups_as_lists(groups) == [[0, 35_886], [17, *range(30_000, 30_005)], [1000, 1001, 1002]]
    assert elapsed < 3, f"exact_duplicates took {elapsed:.2f} s on 35,887 images"


def test_constant_images_are_the_blank_ones_only():
    dataset = planted()
    images = dataset.images.copy()
    images[40] = 17
    images[41] = 17
    images[41, 0, 0] = 18  # one pixel off: not constant
    assert constant_images(images).tolist() == [5, 9, 40]
    assert constant_images(planted((8, 8, 3)).images).tolist() == [5, 9]


def test_class_counts_table_rows_are_classes_and_total_columns_are_splits():
    labels = np.array([0, 0, 1, 3, 3, 3, 6, 2], dtype=np.int64)
    dataset = FerDataset("tiny", random_images(8, (4, 4)), labels, FER2013_CLASSES)
    table = class_counts_table(dataset, {"train": np.array([0, 1, 3, 4, 6]), "test": np.array([2, 5, 7])})
    assert list(table.index) == [*FER2013_CLASSES, "total"] and list(table.columns) == ["all", "train", "test"]
    assert table["all"].tolist() == [2, 1, 1, 3, 0, 0, 1, 8]
    assert table["train"].tolist() == [2, 0, 0, 2, 0, 0, 1, 5]
    assert table["test"].tolist() == [0, 1, 1, 1, 0, 0, 0, 3]
    assert list(class_counts_table(dataset).columns) == ["all"]


def test_cross_split_duplicates_name_splits_labels_and_leaks():
    cross = cross_split_duplicates(planted(), SPLITS)
    assert cross == [
        {"indices": [12, 45], "splits": ["train", "test"], "labels": ["happy", "sad"], "split_names": ["train", "test"],
         "conflicting_labels": True, "leak": True},
        {"indices": [28, 35], "splits": ["train", "val"], "labels": ["angry", "angry"],
         "split_names": ["train", "val"], "conflicting_labels": False, "leak": True},
        {"indices": [33, 44], "splits": ["val", "test"], "labels": ["neutral", "neutral"],
         "split_names": ["val", "test"], "conflicting_labels": False, "leak": False},
    ]
    dataset = planted()
    dataset.images[1] = dataset.images[3]
    splits = {**SPLITS, "train": np.arange(3, 30), "unlabeled": np.arange(0, 3)}
    first = cross_split_duplicates(dataset, splits)[0]
    assert first["indices"] == [1, 3, 7, 25] and first["splits"] == ["unlabeled", "train", "train", "train"]
    assert first["split_names"] == ["train", "unlabeled"] and not first["leak"]  # both are training data


def test_duplicate_training_indices_are_train_copies_of_val_or_test_images():
    dataset = planted()
    assert duplicate_training_indices(dataset, SPLITS).tolist() == [12, 28]
    # the within-train group 3/7/25 stays; a copy in 'unlabeled' is training data, not held out
    dataset.images[2] = dataset.images[3]
    splits = {**SPLITS, "train": np.arange(3, 30), "unlabeled": np.arange(0, 3)}
    assert duplicate_training_indices(dataset, splits).tolist() == [12, 28]
    assert duplicate_training_indices(dataset, {"train": np.arange(50)}).tolist() == []


def test_inspect_summarises_and_flags_the_leak_loudly():
    dataset = planted()
    summary = inspect(dataset, SPLITS)
    json.dumps(summary, allow_nan=False)  # JSON-serialisable, no numpy types
    assert summary["images"] == 50 and summary["image_size"] == [48, 48] and summary["channels"] == 1
    assert summary["split_kind"] == "given" and summary["splits"] == ["train", "val", "test"]
    assert summary["class_counts"]["all"]["total"] == 50 and summary["class_counts"]["test"]["total"] == 10
    assert summary["class_counts"]["train"]["happy"] == 5  # 3, 10, 12 (planted happy), 17, 24
    assert summary["subjects"] == 10
    assert summary["duplicates"] == {
        "groups": 4, "images": 9, "redundant": 5,
        "examples": [
            {"size": size, "members": [sample(dataset, i) for i in members]}
            for size, members in ((3, [3, 7, 25]), (2, [12, 45]), (2, [28, 35]), (2, [33, 44]))
        ],
    }
    cross = summary["cross_split_duplicates"]
    assert (cross["groups"], cross["images"], cross["leak_groups"], cross["leak_images"], cross["conflicting_labels"]) == (3, 6, 2, 4, 1)
    assert cross["by_splits"] == {"train+test": 1, "train+val": 1, "val+test": 1}
    assert [ex["members"][0]["index"] for ex in cross["examples"]] == [12, 28, 33]  # leaks with conflicts first
    assert summary["constant_images"]["count"] == 2
    assert [(ex["index"], ex["value"], ex["source"]) for ex in summary["constant_images"]["examples"]] == [(5, 0, "img05.png"), (9, 255, "img09.png")]
    assert summary["skipped"] == [{"path": "bad.png", "reason": "not an image"}] and summary["resized"] == ["big.png"]
    assert len(summary["warnings"]) == 2
    assert "4 images in 2 group(s)" in summary["warnings"][0] and "train+test: 1, train+val: 1" in summary["warnings"][0]
    assert "--set data.drop_duplicates=true" in summary["warnings"][0]
    assert "1 cross-split duplicate group(s) carry conflicting labels" in summary["warnings"][1]


def sample(dataset: FerDataset, i: int) -> dict:
    split = next(name for name, idx in SPLITS.items() if i in idx)
    return {"index": i, "source": f"img{i:02d}.png", "label": dataset.class_names[dataset.labels[i]], "split": split}


def test_inspect_uses_the_official_split_when_no_splits_are_given():
    dataset = planted()
    dataset.meta["official_split"] = np.array(["Training"] * 30 + ["PublicTest"] * 10 + ["PrivateTest"] * 10)
    summary = inspect(dataset)
    assert summary["split_kind"] == "official" and summary["splits"] == ["Training", "PublicTest", "PrivateTest"]
    assert summary["cross_split_duplicates"]["leak_by_splits"] == {"Training+PrivateTest": 1, "Training+PublicTest": 1}
    assert summary["warnings"]

    del dataset.meta["official_split"]
    bare = inspect(dataset)
    assert bare["split_kind"] is None and bare["cross_split_duplicates"] is None and bare["warnings"] == []
    assert list(bare["class_counts"]) == ["all"] and bare["duplicates"]["groups"] == 4
    assert bare["duplicates"]["examples"][0]["members"][0] == {"index": 3, "source": "img03.png", "label": "happy", "split": None}


def test_inspect_without_sources_or_subjects():
    dataset = FerDataset("plain", random_images(10, (8, 8)), np.zeros(10, dtype=np.int64), ("a", "b"))
    dataset.images[4] = dataset.images[1]
    summary = inspect(dataset, {"train": np.arange(5), "test": np.arange(5, 10)})
    json.dumps(summary, allow_nan=False)
    assert summary["subjects"] is None and summary["skipped"] == [] and summary["resized"] == []
    assert summary["duplicates"]["examples"][0]["members"][1] == {"index": 4, "source": None, "label": "a", "split": "train"}
    assert summary["cross_split_duplicates"]["groups"] == 0 and summary["warnings"] == []
