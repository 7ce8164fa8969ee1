"""The thesis's CK+ protocols: peak frames (``data.ckplus_frames=peak``, the last frame of each sequence),
plain stratified k-fold (``split.kind=stratified_kfold``) treated as a k-fold study everywhere, and the
warning, in preflight and in the report, that a split ignoring subjects puts one subject on both sides.

Hand-made CK+ trees here; the real CK+ 48×48 set (981 images, 327 sequences, 118 subjects) when present."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

from ferbench.harness.data.cache import cache_folder, cache_options, cache_root
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.data.splits import (SPLIT_NAMES, SplitError, class_shortfalls, make_splits, subject_mixing_text,
                                          subject_mixing_warning)
from ferbench.harness.spec import DataSpec, SplitSpec, load_spec
from ferbench.harness.spec_yaml import unused_data_keys
from ferbench.harness.study.preflight import prepare_data
from ferbench.reports.derived import fold_test_train_ratio
from ferbench.reports.markdown import split_text

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"
NAME = re.compile(r"^S(\d+)_(\d+)_(\d+)$")
MIXING = "not subject-exclusive"


def load(path: Path, **options) -> FerDataset:
    return load_dataset(DataSpec(format="ckplus", path=str(path), **{"cache": False, **options}))


def sequence_of(source: str) -> tuple[int, int, int]:
    subject, sequence, frame = map(int, NAME.match(Path(source).stem).groups())
    return subject, sequence, frame


def write_ckplus(root: Path, sequences: dict[tuple[int, int], tuple[str, list[int]]]) -> None:
    """``(subject, sequence) → (class folder, frame numbers)``; each image's value is its frame number."""
    for (subject, sequence), (folder, frames) in sequences.items():
        for frame in frames:
            write_image(root / folder / f"S{subject:03d}_{sequence:03d}_{frame:08d}.png", value=frame)


def write_balanced_ckplus(root: Path, subjects: int = 6) -> None:
    """3 classes × ``subjects`` subjects, one 3-frame sequence per (subject, class): 18·subjects/6 sequences."""
    write_ckplus(root, {(subject, c): (folder, [1, 2, 3]) for subject in range(1, subjects + 1)
                        for c, folder in enumerate(("happy", "sadness", "surprise"), start=1)})


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


# --- peak frames ------------------------------------------------------------------------------


def test_peak_keeps_the_highest_frame_of_each_sequence(tmp_path):
    write_ckplus(tmp_path, {(5, 1): ("happy", [9, 10, 11]), (5, 2): ("sadness", [3, 7, 5]), (12, 1): ("happy", [20])})
    every, peak = load(tmp_path), load(tmp_path, ckplus_frames="peak")
    assert len(every) == 7
    assert sorted(sequence_of(s) for s in peak.sources) == [(5, 1, 11), (5, 2, 7), (12, 1, 20)]
    assert sorted(int(image.min()) for image in peak.images) == [7, 11, 20]  # the pixels are the peak frames'
    assert sorted(peak.subjects.tolist()) == [5, 5, 12]


def test_a_sequence_filed_under_two_classes_is_named(tmp_path):
    write_ckplus(tmp_path, {(5, 1): ("happy", [1, 2])})
    write_ckplus(tmp_path, {(5, 1): ("sadness", [3])})
    with pytest.raises(DataError, match=r"S005_001_00000002\.png and .*S005_001_00000003\.png: sequence S005_001 is "
                                        r"filed under two classes \(happy, sad\); move its frames into one class folder$"):
        load(tmp_path, ckplus_frames="peak")


def test_the_dataset_cache_keys_on_the_frames_option(tmp_path, cache_dir):
    write_ckplus(tmp_path / "ck", {(1, 1): ("happy", [1, 2, 3]), (2, 1): ("sadness", [4, 5])})
    folders = {frames: cache_folder(tmp_path / "ck", cache_options(DataSpec(format="ckplus", ckplus_frames=frames), "ckplus"))
               for frames in ("all", "peak")}
    assert folders["all"] != folders["peak"]
    first = {frames: len(load(tmp_path / "ck", cache=True, ckplus_frames=frames)) for frames in ("all", "peak")}
    again = {frames: len(load(tmp_path / "ck", cache=True, ckplus_frames=frames)) for frames in ("all", "peak")}
    assert first == again == {"all": 5, "peak": 2}
    assert sorted(cache_root().iterdir()) == sorted(folders.values())


def test_print_spec_shows_the_frames_key_only_where_ckplus_can_be_read():
    assert "ckplus_frames" not in unused_data_keys("ckplus") and "ckplus_frames" not in unused_data_keys("auto")
    assert all("ckplus_frames" in unused_data_keys(other) for other in ("folder", "fer2013", "synthfer", "rafdb"))


@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48x48 set is not at {CKPLUS48}")
def test_real_ckplus48_peak_frames_are_the_327_last_frames_one_per_sequence():
    every, peak = load(CKPLUS48), load(CKPLUS48, ckplus_frames="peak")
    frames: dict[tuple[int, int], list[int]] = defaultdict(list)
    labels: dict[tuple[int, int], set[int]] = defaultdict(set)
    for source, label in zip(every.sources, every.labels):
        subject, sequence, frame = sequence_of(source)
        frames[subject, sequence].append(frame)
        labels[subject, sequence].add(int(label))
    assert len(peak) == len(frames) == 327 and peak.images.shape == (327, 48, 48)
    assert all(len(found) == 1 for found in labels.values())  # no sequence has two labels
    kept = [sequence_of(source) for source in peak.sources]
    assert len({(subject, sequence) for subject, sequence, _ in kept}) == 327  # one per sequence
    assert all(frame == max(frames[subject, sequence]) for subject, sequence, frame in kept)
    assert all(int(label) in labels[sequence_of(s)[:2]] for s, label in zip(peak.sources, peak.labels))
    counts = dict(zip(peak.class_names, peak.class_counts().tolist()))
    assert counts == {"angry": 45, "disgust": 59, "fear": 25, "happy": 69, "sad": 28, "surprise": 83, "contempt": 18}
    assert len(np.unique(peak.subjects)) == 118


# --- stratified k-fold ------------------------------------------------------------------------


def dataset_of(labels: np.ndarray, subjects: np.ndarray | None = None, name: str = "fixture") -> FerDataset:
    return FerDataset(images=np.zeros((len(labels), 4, 4), dtype=np.uint8), labels=np.asarray(labels, dtype=np.int64),
                      class_names=tuple(f"c{i}" for i in range(int(np.max(labels)) + 1)), subjects=subjects, name=name)


# The peak frames' class sizes: 327 images, smallest class 18.
PEAK_COUNTS = np.array([45, 59, 25, 69, 28, 83, 18])


def peak_like_labels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(PEAK_COUNTS)), PEAK_COUNTS))


@pytest.mark.parametrize("k", [5, 8, 10])
def test_stratified_kfold_tests_every_image_once_in_parts_of_the_right_size(k):
    labels = peak_like_labels()
    folds = make_splits(dataset_of(labels), SplitSpec(kind="stratified_kfold", k=k, val_fraction=0.1))
    n = len(labels)
    assert len(folds) == k
    tests = np.concatenate([fold["test"] for fold in folds])
    assert np.array_equal(np.sort(tests), np.arange(n))  # every image in exactly one test part
    for fold in folds:
        assert set(fold) == set(SPLIT_NAMES)
        assert np.array_equal(np.sort(np.concatenate([fold[name] for name in SPLIT_NAMES])), np.arange(n))
        assert len(fold["test"]) in (n // k, -(-n // k))
        per_class = np.bincount(labels[fold["test"]], minlength=len(PEAK_COUNTS))
        assert np.all(np.abs(per_class - PEAK_COUNTS / k) < 1)  # stratified: each class's share to within an image
        assert abs(len(fold["val"]) - 0.1 * (n - len(fold["test"]))) <= 1
        assert set(np.unique(labels[fold["val"]])) == set(range(len(PEAK_COUNTS)))  # val stratified too


def test_stratified_kfold_is_seeded_and_runs_the_chosen_folds():
    data = dataset_of(peak_like_labels())
    folds = make_splits(data, SplitSpec(kind="stratified_kfold", k=5))
    again = make_splits(data, SplitSpec(kind="stratified_kfold", k=5))
    other = make_splits(data, SplitSpec(kind="stratified_kfold", k=5, seed=7))
    assert all(np.array_equal(a[name], b[name]) for a, b in zip(folds, again) for name in SPLIT_NAMES)
    assert not np.array_equal(folds[0]["test"], other[0]["test"])
    chosen = make_splits(data, SplitSpec(kind="stratified_kfold", k=5, folds=[1, 3]))
    assert [c["test"].tolist() for c in chosen] == [folds[1]["test"].tolist(), folds[3]["test"].tolist()]


def test_stratified_kfold_studies_are_kfold_studies():
    spec = load_spec("quick", ["split.kind=stratified_kfold", "split.k=8", "split.folds=[0,5]", "grid.backbone=[small_cnn]",
                               "grid.init=[random]"])
    assert spec.split.kfold and spec.split.fold_ids() == [0, 5]
    assert [arm["arm_id"] for arm in spec.arms()] == ["small_cnn_random_baseline_s0_f0", "small_cnn_random_baseline_s0_f5"]
    assert fold_test_train_ratio(spec.split) == pytest.approx(1 / 7)  # the corrected resampled t over folds
    assert split_text(spec.split) == "stratified 8-fold (folds run: [0, 5]), val = 0.1 of each fold's training images (seed 42)"
    assert not SplitSpec(kind="stratified").kfold and SplitSpec(kind="stratified").fold_ids() == [0]


def test_too_many_stratified_folds_are_named_before_splitting():
    labels = np.repeat([0, 1, 2], [12, 12, 4])
    problems = class_shortfalls(dataset_of(labels), SplitSpec(kind="stratified_kfold", k=5))
    assert problems == ["split: class 'c2' (4 images) has fewer than the 5 that split.k=5 stratified folds need for every "
                        "fold's test part to hold one; add images, lower split.k, leave it out with "
                        "--set data.drop_classes=[c2], or run anyway with --set split.allow_missing_classes=true (val and "
                        "test metrics of such a class are then undefined)"]
    with pytest.raises(SplitError, match=r"^split\.k: 20 stratified folds need a class of at least 20 images; the largest "
                                         r"has 12; lower split\.k or add images$"):
        make_splits(dataset_of(labels), SplitSpec(kind="stratified_kfold", k=20))


# --- saying that a split ignores subjects ------------------------------------------------------


@pytest.mark.parametrize("kind", ["stratified", "stratified_kfold"])
def test_a_split_ignoring_subjects_says_so_where_there_are_subjects(kind):
    split = SplitSpec(kind=kind, k=5)
    text = split_text(split, "ckplus", 118)
    assert f"**Not subject-exclusive: split.kind={kind} ignores the dataset's 118 subjects, so images of one subject sit " \
           "on both sides of the split (train and test); the numbers are optimistic and comparable only with results " \
           "under the same protocol (subject_kfold keeps each subject on one side).**" in text
    assert MIXING not in split_text(split, "ckplus", None)  # no subject ids
    assert MIXING not in split_text(split, "synthfer", 500)  # generated identities
    assert MIXING not in split_text(SplitSpec(kind="subject_kfold"), "ckplus", 118)
    assert MIXING not in split_text(SplitSpec(kind="official"), "ckplus", 118)


def test_the_mixing_warning_counts_the_subjects_on_both_sides():
    subjects = np.repeat(np.arange(10), 6)
    labels = np.tile(np.arange(3), 20)
    data = dataset_of(labels, subjects=subjects)
    split = SplitSpec(kind="stratified_kfold", k=3)
    folds = dict(enumerate(make_splits(data, split)))
    warning = subject_mixing_warning(data, split, folds)
    shared = max(len(set(subjects[f["test"]]) & set(subjects[np.concatenate([f["train"], f["val"]])])) for f in folds.values())
    assert warning.startswith(subject_mixing_text(split, "fixture", 10) + f"; {shared} of ")
    assert warning.endswith("test subjects (the most in a fold) also have train or val images")
    one_image_each = dataset_of(labels, subjects=np.arange(60))  # no subject can sit on both sides
    assert subject_mixing_warning(one_image_each, split, dict(enumerate(make_splits(one_image_each, split)))) is None


def test_preflight_warns_once_on_a_ckplus_study_with_plain_folds(tmp_path, caplog, cache_dir):
    write_balanced_ckplus(tmp_path / "ck")
    caplog.set_level(logging.WARNING, logger="ferbench")
    common = ["data.format=ckplus", f"data.path={tmp_path / 'ck'}", "data.ckplus_frames=peak", "split.k=3",
              "split.val_fraction=0.25", "split.unlabeled_fraction=0", "grid.variant=[baseline]"]
    dataset, splits, _, _, problems = prepare_data(load_spec("quick", [*common, "split.kind=stratified_kfold"]))
    assert problems == [] and len(dataset) == 18 and sorted(splits) == [0, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if MIXING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(
        "data: warning: not subject-exclusive: split.kind=stratified_kfold ignores the dataset's 6 subjects")
    caplog.clear()
    assert prepare_data(load_spec("quick", [*common, "split.kind=subject_kfold"]))[4] == []
    assert not [r for r in caplog.records if MIXING in r.getMessage()]


@pytest.mark.slow
@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48×48 set is not at {CKPLUS48}")
def test_ckplus_peak_frames_stratified_kfold_study_reports_its_protocol(tmp_path):
    from ferbench.harness.data.splits import load_splits
    from ferbench.harness.study.engine import run_study

    spec = load_spec("quick", [
        "data.format=ckplus", f"data.path={CKPLUS48}", "data.ckplus_frames=peak", "split.kind=stratified_kfold",
        "split.k=5", "split.folds=[0,3]", "grid.backbone=[small_cnn]", "grid.init=[random]", "train.epochs=1",
        "resources.cpu=1", f"run.storage={tmp_path}", "run.name=ckplus-peak",
    ])
    outcome = run_study(spec)
    assert outcome.statuses == {f"small_cnn_random_baseline_s0_f{fold}": "completed" for fold in (0, 3)}
    folds = load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")
    assert set(folds) == {0, 3} and all(len(split["test"]) in (65, 66) for split in folds.values())
    report = (outcome.report_dir / "report.md").read_text()
    assert "327 images 48×48" in report and "stratified 5-fold (folds run: [0, 3])" in report
    assert "**Not subject-exclusive: split.kind=stratified_kfold ignores the dataset's 118 subjects" in report
