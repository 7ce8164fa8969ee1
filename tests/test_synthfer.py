"""SynthFER: determinism, FER2013 proportions, label noise, identities, action units, validation."""

from __future__ import annotations

import numpy as np
import pytest

from harness.dataset import ACTION_UNITS, FER2013_CLASSES
from harness.synthfer import FER2013_COUNTS, class_counts, generate_synthfer

CLASS = {name: i for i, name in enumerate(FER2013_CLASSES)}
AU = {name: i for i, name in enumerate(ACTION_UNITS)}


@pytest.fixture(scope="module")
def synth():
    return generate_synthfer(num_images=2000, seed=0, label_noise=0.05)


def test_same_arguments_give_identical_bytes_and_other_seeds_differ(synth):
    again = generate_synthfer(num_images=2000, seed=0, label_noise=0.05)
    assert synth.images.tobytes() == again.images.tobytes()
    np.testing.assert_array_equal(synth.labels, again.labels)
    np.testing.assert_array_equal(synth.subjects, again.subjects)
    other = generate_synthfer(num_images=2000, seed=1, label_noise=0.05)
    assert (synth.images != other.images).mean() > 0.5
    assert synth.fingerprint() != other.fingerprint()


@pytest.mark.parametrize("size", [16, 32, 48, 96])
def test_shape_and_dtype_follow_image_size(size):
    data = generate_synthfer(num_images=21, image_size=size, seed=3)
    assert data.images.shape == (21, size, size) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.class_names == FER2013_CLASSES


def test_clean_class_counts_are_fer2013_proportions(synth):
    clean = np.bincount(synth.meta["clean_labels"], minlength=7)
    np.testing.assert_array_equal(clean, class_counts(2000))
    expected = 2000 * np.array(FER2013_COUNTS) / sum(FER2013_COUNTS)
    assert np.abs(clean - expected).max() < 1.0
    assert clean.argmin() == CLASS["disgust"] and clean.argmax() == CLASS["happy"]


def test_class_counts_allocation_is_exact_and_keeps_every_class():
    for n in (7, 10, 999, 35887):
        counts = class_counts(n)
        assert counts.sum() == n and (counts >= 1).all()
    np.testing.assert_array_equal(class_counts(35887), FER2013_COUNTS)


def test_label_noise_rate_and_flipped_labels_differ(synth):
    mask, clean = synth.meta["noisy_label_mask"], synth.meta["clean_labels"]
    assert mask.sum() == round(0.05 * 2000)
    assert (synth.labels[mask] != clean[mask]).all()
    np.testing.assert_array_equal(synth.labels[~mask], clean[~mask])
    noiseless = generate_synthfer(num_images=300, seed=0, label_noise=0.0)
    np.testing.assert_array_equal(noiseless.labels, noiseless.meta["clean_labels"])


def test_identities_repeat_across_images(synth):
    per_identity = np.bincount(synth.subjects)
    assert len(per_identity) == 2000 // 25 and per_identity.min() >= 10


def test_action_units_follow_the_expressions(synth):
    aus, clean = synth.action_units, synth.meta["clean_labels"]
    assert aus.shape == (2000, len(ACTION_UNITS)) and set(np.unique(aus)) <= {0, 1}

    def rate(au: str, cls: str) -> float:
        return aus[clean == CLASS[cls], AU[au]].mean()

    assert rate("AU12", "happy") > 0.6 > 0.1 > rate("AU12", "sad")
    assert rate("AU26", "surprise") > 3 * rate("AU26", "neutral")
    assert rate("AU9", "disgust") > 3 * rate("AU9", "happy")
    assert rate("AU4", "angry") > 3 * rate("AU4", "surprise")


def test_classes_look_different_where_the_expression_is(synth):
    images, clean = synth.images.astype(np.float32), synth.meta["clean_labels"]
    assert images.std(axis=(1, 2)).min() > 1.0  # no constant images
    mean_face = {name: images[clean == i].mean(0) for name, i in CLASS.items()}
    lower_half = slice(24, 48)
    happy_vs_sad = np.abs(mean_face["happy"][lower_half] - mean_face["sad"][lower_half]).mean()
    sad_vs_neutral = np.abs(mean_face["sad"][lower_half] - mean_face["neutral"][lower_half]).mean()
    assert happy_vs_sad > sad_vs_neutral  # sad/neutral are a confusable pair, happy/sad are not


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_images": 3}, "num_images"),
        ({"image_size": 8}, "image_size"),
        ({"label_noise": 1.0}, "label_noise"),
        ({"occlusion_rate": -0.1}, "occlusion_rate"),
        ({"num_identities": 0}, "num_identities"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_synthfer(**{"num_images": 50, **kwargs})


def test_learnable_but_not_trivial():
    """A small CNN trained for a few epochs ends far above chance and the majority rate, and
    clearly below 100% (overlapping expressions, nuisance, label noise)."""
    import torch

    from backbones import create_backbone
    from harness.augment import InputAdapter
    from harness.splits import stratified_split
    from harness.training import accuracy_and_loss, predict, train_one_epoch

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
