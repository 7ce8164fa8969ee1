"""FER2013 CSV reading (both published headers) and its bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest

from harness.dataset import FER2013_CLASSES
from harness.loaders import DataError, load_dataset
from harness.spec import DataSpec


def write_fer_csv(path, labels, side=4, header="emotion,pixels,Usage", sep=","):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(labels), side * side))
    usages = ["Training", "PublicTest", "PrivateTest"]
    rows = [header]
    for i, (label, pixels) in enumerate(zip(labels, images)):
        fields = {"emotion": str(label), "pixels": " ".join(map(str, pixels)), "Usage": usages[i % 3]}
        rows.append(sep.join(fields[name.strip()] for name in header.split(",")))
    path.write_text("\n".join(rows) + "\n")
    return images.reshape(-1, side, side).astype(np.uint8)


def load(path):
    return load_dataset(DataSpec(name="fer2013", path=str(path)))


def test_reads_fer2013_csv_pixels_labels_and_usage(tmp_path):
    labels = [0, 1, 2, 3, 4, 5, 6, 3]
    expected = write_fer_csv(tmp_path / "fer2013.csv", labels)
    dataset = load(tmp_path / "fer2013.csv")
    assert dataset.class_names == FER2013_CLASSES
    np.testing.assert_array_equal(dataset.images, expected)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert list(dataset.meta["usage"][:3]) == ["Training", "PublicTest", "PrivateTest"]


def test_reads_icml_face_data_header_with_leading_spaces(tmp_path):
    expected = write_fer_csv(tmp_path / "icml_face_data.csv", [6, 5, 4], header="emotion, Usage, pixels", sep=", ")
    dataset = load(tmp_path / "icml_face_data.csv")
    np.testing.assert_array_equal(dataset.images, expected)
    np.testing.assert_array_equal(dataset.labels, [6, 5, 4])


@pytest.mark.parametrize(
    "content, expected",
    [
        ("emotion,pixel\n0,1 2 3 4\n", "missing column(s) ['pixels']"),
        ("emotion,pixels\n0,1 2 3 4\n9,1 2 3 4\n", "row 3: emotion 9 is not an integer 0..6"),
        ("emotion,pixels\n0,1 2 3 4\n1,1 2 3\n", "row 3: 3 pixel values, expected 4"),
        ("emotion,pixels\n0,1 2 3 400\n", "pixel values outside 0..255"),
    ],
)
def test_bad_csv_names_file_row_and_problem(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_missing_path_tells_how_to_set_it(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_dataset(DataSpec(name="fer2013"))
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.csv")
