"""Tests for ferbench.harness.data.synthfer, the embedded synthetic FER dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferbench.harness.data.dataset import ACTION_UNITS, FER2013_CLASSES, FerDataset
from ferbench.harness.data.synthfer import FER2013_COUNTS, class_counts, generate_synthfer

CLS = {name: i for i, name in enumerate(FER2013_CLASSES)}
AU = {name: i for i, name in enumerate(ACTION_UNITS)}


@pytest.fixture(scope="module")
def default_ds() -> FerDataset:
    return generate_synthfer()  # 5000 images, 48x48, seed 0, 5% label noise


def test_fer2013_reference_counts():
    assert FER2013_COUNTS == (4953, 547, 5121, 8989, 6077, 4002, 6198)
    assert sum(FER2013_COUNTS) == 35887


def test_same_arguments_give_identical_bytes():
    a = generate_synthfer(300, image_size=40, seed=3)
    b = generate_synthfer(300, image_size=40, seed=3)
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.subjects, b.subjects)
    np.testing.assert_array_equal(a.action_units, b.action_units)
    np.testing.assert_array_equal(a.meta["noisy_label_mask"], b.meta["noisy_label_mask"])
    assert a.fingerprint() == b.fingerprint()


def test_different_seeds_give_different_data():
    a = generate_synthfer(300, seed=3)
    b = generate_synthfer(300, seed=4)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.labels, b.labels)
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("size", [16, 32, 48, 64, 128])
def test_shapes_and_dtypes(size):
    ds = generate_synthfer(21, image_size=size, seed=1)
    assert isinstance(ds, FerDataset)
    assert ds.name == "synthfer"
    assert ds.images.shape == (21, size, size) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (21,) and ds.labels.dtype == np.int64
    assert ds.subjects.shape == (21,) and ds.subjects.dtype == np.int64
    assert ds.action_units.shape == (21, len(ACTION_UNITS)) and ds.action_units.dtype == np.uint8
    assert set(np.unique(ds.action_units)) <= {0, 1}
    assert ds.class_names == FER2013_CLASSES and ds.au_names == ACTION_UNITS
    assert ds.image_size == (size, size) and ds.channels == 1
    # every image has real content, not a flat fill
    assert (ds.images.reshape(21, -1).std(axis=1) > 5).all()


def test_class_counts_are_largest_remainder_of_fer2013(default_ds):
    # 5000 * count / 35887 = 690.08, 76.21, 713.49, 1252.40, 846.70, 557.58, 863.54:
    # floors sum to 4997, the three largest remainders (sad, surprise, neutral) get one more.
    expected = [690, 76, 713, 1252, 847, 558, 864]
    np.testing.assert_array_equal(class_counts(5000), expected)
    clean = default_ds.meta["clean_labels"]
    np.testing.assert_array_equal(np.bincount(clean, minlength=7), expected)


@pytest.mark.parametrize("n", [7, 50, 123, 1000, 4321, 35887])
def test_class_counts_within_one_image_of_proportion(n):
    counts = class_counts(n)
    quota = n * np.array(FER2013_COUNTS) / sum(FER2013_COUNTS)
    assert counts.sum() == n and (counts >= 1).all()
    if n >= 100:
        assert np.abs(counts - quota).max() < 1
        assert counts[CLS["disgust"]] == counts.min() < 0.02 * n  # disgust is rare
    if n == 35887:
        np.testing.assert_array_equal(counts, FER2013_COUNTS)


def test_label_noise_flips_exactly_the_masked_labels(default_ds):
    mask = default_ds.meta["noisy_label_mask"]
    clean = default_ds.meta["clean_labels"]
    assert mask.dtype == bool and mask.shape == (5000,)
    assert mask.sum() == 250  # 5% of 5000
    assert (default_ds.labels[mask] != clean[mask]).all()
    np.testing.assert_array_equal(default_ds.labels[~mask], clean[~mask])
    assert len(np.unique(default_ds.labels[mask])) == 7  # flipped to varied classes


def test_label_noise_rate_is_honoured():
    ds = generate_synthfer(400, image_size=24, seed=2, label_noise=0.3)
    mask = ds.meta["noisy_label_mask"]
    assert mask.mean() == pytest.approx(0.3, abs=0.01)
    assert (ds.labels != ds.meta["clean_labels"]).mean() == pytest.approx(0.3, abs=0.01)


def test_no_label_noise_keeps_clean_labels():
    ds = generate_synthfer(200, image_size=24, seed=2, label_noise=0.0)
    np.testing.assert_array_equal(ds.labels, ds.meta["clean_labels"])
    assert not ds.meta["noisy_label_mask"].any()


def test_subjects_default_identities(default_ds):
    ids, per_id = np.unique(default_ds.subjects, return_counts=True)
    assert len(ids) == 5000 // 25
    assert per_id.min() >= 20  # every identity has several images


def test_subjects_explicit_identities():
    ds = generate_synthfer(100, image_size=24, num_identities=10)
    ids, per_id = np.unique(ds.subjects, return_counts=True)
    np.testing.assert_array_equal(ids, np.arange(10))
    assert (per_id == 10).all()
    assert (np.unique(generate_synthfer(10, image_size=24).subjects) == [0]).all()  # at least one


def test_action_units_follow_the_expressions(default_ds):
    aus, clean = default_ds.action_units, default_ds.meta["clean_labels"]
    rate = lambda cls, au: aus[clean == CLS[cls], AU[au]].mean()  # noqa: E731
    assert rate("happy", "AU12") > 0.4 and rate("sad", "AU12") < 0.05
    assert rate("surprise", "AU26") > 0.4 and rate("neutral", "AU26") < 0.05
    assert rate("angry", "AU4") > 0.4 and rate("happy", "AU4") < 0.05
    assert rate("disgust", "AU9") > rate("happy", "AU9") + 0.3
    assert rate("surprise", "AU2") > rate("sad", "AU2") + 0.3
    intensities = default_ds.meta["action_intensities"]
    assert intensities.shape == aus.shape and intensities.min() >= 0 and intensities.max() <= 1
    np.testing.assert_array_equal(aus, (intensities > 0.5).astype(np.uint8))


def _standardised_class_mean(ds: FerDataset, cls: str, region, part: slice = slice(None)) -> np.ndarray:
    """Mean over one class of images standardised per image (removes lighting), cropped to region."""
    idx = np.flatnonzero(ds.meta["clean_labels"] == CLS[cls])[part]
    images = ds.images[idx].astype(np.float64)
    images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True)
    return images[:, region[0], region[1]].mean(axis=0)


def test_classes_differ_in_the_mouth_region(default_ds):
    mouth = (slice(30, 46), slice(12, 36))
    mean = {c: _standardised_class_mean(default_ds, c, mouth) for c in ("happy", "sad", "surprise", "neutral")}
    # noise floor: two disjoint halves of one class
    floor = max(np.abs(_standardised_class_mean(default_ds, c, mouth, slice(0, None, 2))
                       - _standardised_class_mean(default_ds, c, mouth, slice(1, None, 2))).mean()
                for c in ("happy", "sad"))
    gap = lambda a, b: np.abs(mean[a] - mean[b]).mean()  # noqa: E731
    assert gap("happy", "sad") > 2 * floor
    assert gap("surprise", "neutral") > 4 * floor
    assert mean["surprise"].min() < mean["neutral"].min() - 0.5  # open mouths are dark
    assert gap("sad", "neutral") < gap("happy", "sad")  # sad/neutral are a confusable pair, happy/sad are not


def test_occlusion_changes_pixels_but_not_labels():
    clear = generate_synthfer(100, image_size=32, seed=5, occlusion_rate=0.0)
    covered = generate_synthfer(100, image_size=32, seed=5, occlusion_rate=1.0)
    assert not clear.meta["occluded"].any() and covered.meta["occluded"].all()
    np.testing.assert_array_equal(clear.labels, covered.labels)
    differs = (clear.images != covered.images).reshape(100, -1).mean(axis=1)
    assert (differs > 0.02).all()


def test_meta_params_are_json(default_ds):
    params = json.loads(json.dumps(default_ds.meta["params"]))
    assert params == {"num_images": 5000, "image_size": 48, "seed": 0, "label_noise": 0.05,
                      "num_identities": 200, "occlusion_rate": 0.1}


@pytest.mark.parametrize("kwargs, name", [
    ({"num_images": 6}, "num_images"),
    ({"num_images": 10.5}, "num_images"),
    ({"image_size": 15}, "image_size"),
    ({"image_size": 257}, "image_size"),
    ({"label_noise": 1.0}, "label_noise"),
    ({"label_noise": -0.1}, "label_noise"),
    ({"occlusion_rate": 1.5}, "occlusion_rate"),
    ({"num_identities": 0}, "num_identities"),
    ({"num_images": 20, "num_identities": 21}, "num_identities"),
    ({"seed": -1}, "seed"),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_synthfer(**kwargs)


@pytest.mark.slow
def test_learnable_but_not_trivial():
    """A small CNN trained for a few epochs ends far above chance and the majority rate, and
    clearly below 100% (overlapping expressions, nuisance, label noise)."""
    import torch

    from ferbench.backbones import create_backbone
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.data.splits import stratified_split
    from ferbench.harness.tasks.classification import accuracy_and_loss
    from ferbench.harness.train.loop import predict, train_one_epoch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = generate_synthfer(num_images=3000, seed=0)
    split = {k: torch.from_numpy(v) for k, v in stratified_split(data.labels, (0.7, 0.1, 0.2), 42).items()}
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    model = create_backbone("small_cnn", 7)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    adapter = InputAdapter(48, 1, "GRAY", (0.5,), (0.5,))
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        train_one_epoch(model, optimizer, images, labels, split["train"], batch_size=64, adapter=adapter,
                        augment=None, generator=generator, device=torch.device("cpu"))
    test_acc, _ = accuracy_and_loss(predict(model, images, split["test"], batch_size=256, adapter=adapter,
                                            device=torch.device("cpu")), labels[split["test"]])
    majority = np.bincount(data.labels).max() / len(data)
    assert max(2.5 / 7, majority + 0.08) < test_acc < 0.95, test_acc
