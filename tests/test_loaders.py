"""FER2013 CSV (both published headers), FERPlus relabelling, and the loader's path checks."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import USAGES, write_fer_csv

from ferbench.harness.data.dataset import FER2013_CLASSES
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.spec import DataSpec

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def load(path, **options):
    return load_dataset(DataSpec(format="fer2013", path=str(path), cache=False, **options))


def names(dataset):
    return [dataset.class_names[label] for label in dataset.labels]


def test_reads_fer2013_csv_pixels_labels_split_and_sources(tmp_path):
    labels = [0, 1, 2, 3, 4, 5, 6, 3]
    expected = write_fer_csv(tmp_path / "fer2013.csv", labels, side=48)
    dataset = load(tmp_path / "fer2013.csv")
    assert dataset.class_names == FER2013_CLASSES and dataset.images.shape == (8, 48, 48)
    np.testing.assert_array_equal(dataset.images, expected)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert list(dataset.meta["official_split"]) == [USAGES[i % 3] for i in range(8)]
    assert list(dataset.sources) == [f"{tmp_path / 'fer2013.csv'}:{line}" for line in range(2, 10)]
    assert dataset.meta["format"] == "fer2013" and dataset.subjects is None


def test_reads_icml_face_data_header_with_leading_spaces(tmp_path):
    expected = write_fer_csv(tmp_path / "icml_face_data.csv", [6, 5, 4], header="emotion, Usage, pixels", sep=", ")
    dataset = load(tmp_path / "icml_face_data.csv")
    np.testing.assert_array_equal(dataset.images, expected)
    assert names(dataset) == ["neutral", "surprise", "sad"]
    assert list(dataset.meta["official_split"]) == list(USAGES)


def test_class_names_are_the_classes_present_in_canonical_order(tmp_path):
    write_fer_csv(tmp_path / "few.csv", [6, 3, 6, 0])
    dataset = load(tmp_path / "few.csv")
    assert dataset.class_names == ("angry", "happy", "neutral")
    assert names(dataset) == ["neutral", "happy", "neutral", "angry"]


def test_rows_across_parse_chunks_keep_their_order(tmp_path):
    labels = np.arange(5000) % 7
    expected = write_fer_csv(tmp_path / "long.csv", labels, side=6, seed=3)
    dataset = load(tmp_path / "long.csv")
    np.testing.assert_array_equal(dataset.images, expected)
    np.testing.assert_array_equal(dataset.labels, labels)


def test_bad_row_in_a_later_parse_chunk_names_its_line(tmp_path):
    path = tmp_path / "long.csv"
    write_fer_csv(path, np.arange(4500) % 7, side=4)
    lines = path.read_text().splitlines()
    lines[4321] = lines[4321].replace(",", ",300 ", 1)  # line 4322 gets a 17th value
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4322: 17 pixel values, expected 16 \(4×4, like line 2\)"):
        load(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("emotion,pixel\n0,1 2 3 4\n", "missing column(s) ['pixels']; expected the header emotion,pixels,Usage"),
        ("emotion,pixels\n0,1 2 3 4\n9,1 2 3 4\n", "line 3: emotion '9' is not an integer 0..6 (0 angry, 1 disgust"),
        ("emotion,pixels\n0,1 2 3 4\nsad,1 2 3 4\n", "line 3: emotion 'sad' is not an integer 0..6"),
        ("emotion,pixels\n0,1 2 3 4\n1,1 2 3\n", "line 3: 3 pixel values, expected 4 (2×2, like line 2); fix or delete the row"),
        ("emotion,pixels\n0,1 2 3 4\n1,1 2 x 4\n", "line 3: pixel value 'x' is not an integer 0..255; fix or delete the row"),
        ("emotion,pixels\n0,1 2 3 4\n0,1 -2 3 4\n", "line 3: pixel value '-2' is not an integer 0..255"),
        ("emotion,pixels\n0,1 2 3 4\n0,1 2 3 400\n", "line 3: pixel value 400 is outside 0..255"),
        ("emotion,pixels\n0,1 2 3\n", "line 2: 3 pixel values is not a square image"),
        ("emotion,pixels,Usage\n0,1 2 3 4,Training\n0,1 2 3 4,Validation\n", "line 3: Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
        ("emotion,pixels\n", "no rows after the header"),
        ("emotion,pixels\n0,1 2 3 4,extra\n", "not a readable FER2013 CSV"),
    ],
)
def test_bad_csv_names_file_line_and_fix(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def write_ferplus(path, rows):
    """fer2013new.csv rows as (image name, {column: votes}); Usage cycles like write_fer_csv."""
    columns = FERPLUS_HEADER.split(",")[2:]
    lines = [FERPLUS_HEADER] + [
        ",".join([USAGES[i % 3], name] + [str(votes.get(c, 0)) for c in columns]) for i, (name, votes) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


FERPLUS_ROWS = [
    ("fer0000000.png", {"happiness": 8, "neutral": 2}),  # happy
    ("fer0000001.png", {"NF": 6, "neutral": 4}),  # not a face
    ("fer0000002.png", {"anger": 5, "sadness": 5}),  # tied
    ("fer0000003.png", {"unknown": 10}),  # no emotion votes
    ("fer0000004.png", {"contempt": 6, "surprise": 4}),  # contempt
    ("", {"fear": 10}),  # FERPlus left this image out
    ("fer0000006.png", {"fear": 3, "NF": 3, "unknown": 4}),  # NF ties the top emotion
    ("fer0000007.png", {"sadness": 7, "anger": 3}),  # sad
]


@pytest.fixture
def ferplus(tmp_path):
    csv = tmp_path / "fer2013.csv"
    images = write_fer_csv(csv, [0] * len(FERPLUS_ROWS))
    write_ferplus(tmp_path / "fer2013new.csv", FERPLUS_ROWS)
    return csv, tmp_path / "fer2013new.csv", images


def test_ferplus_majority_vote_drops_not_a_face_ties_and_missing_images(ferplus):
    csv, labels, images = ferplus
    dataset = load(csv, ferplus_labels=str(labels))
    assert names(dataset) == ["happy", "contempt", "sad"]
    assert dataset.class_names == ("happy", "sad", "contempt")
    assert list(dataset.sources) == [f"{csv}:2", f"{csv}:6", f"{csv}:9"]
    np.testing.assert_array_equal(dataset.images, images[[0, 4, 7]])
    assert list(dataset.meta["official_split"]) == [USAGES[0], USAGES[4 % 3], USAGES[7 % 3]]
    assert dataset.meta["ferplus"]["dropped"] == {"no_image_name": 1, "not_a_face": 2, "tied_or_no_votes": 2}


@pytest.mark.parametrize("contempt, expected", [("drop", ["happy", "sad"]), ("happy", ["happy", "happy", "sad"])])
def test_ferplus_contempt_can_be_dropped_or_mapped(ferplus, contempt, expected):
    csv, labels, _ = ferplus
    assert names(load(csv, ferplus_labels=str(labels), contempt=contempt)) == expected


def test_ferplus_with_another_row_count_or_order_is_refused(ferplus):
    csv, labels, _ = ferplus
    write_ferplus(labels, FERPLUS_ROWS[:-1])
    with pytest.raises(DataError, match=rf"^{labels}: 7 rows but {csv} has 8; fer2013new.csv must have one row per FER2013 row, in the same order"):
        load(csv, ferplus_labels=str(labels))
    write_ferplus(labels, FERPLUS_ROWS)
    labels.write_text(labels.read_text().replace("PublicTest,fer0000004", "Training,fer0000004"))
    with pytest.raises(DataError, match=rf"^{labels}: line 6: Usage 'Training' but {csv}:6 has 'PublicTest'"):
        load(csv, ferplus_labels=str(labels))


def test_ferplus_file_missing_or_without_vote_columns(ferplus, tmp_path):
    csv, labels, _ = ferplus
    with pytest.raises(DataError, match="data.ferplus_labels: .*nope.csv does not exist; point it at FERPlus's fer2013new.csv"):
        load(csv, ferplus_labels=str(tmp_path / "nope.csv"))
    labels.write_text("Usage,Image name,neutral\nTraining,a.png,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['happiness'"):
        load(csv, ferplus_labels=str(labels))


def test_missing_or_wrong_kind_of_path_tells_how_to_fix_it(tmp_path):
    with pytest.raises(DataError, match="data.path: format fer2013 needs the dataset's file or folder, e.g. --set data.path="):
        load_dataset(DataSpec(format="fer2013"))
    with pytest.raises(DataError, match=f"data.path: {tmp_path / 'nope.csv'} does not exist"):
        load(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=f"data.path: {tmp_path} is not a file; format fer2013 reads a file such as /data/fer2013.csv"):
        load(tmp_path)


def test_bad_contempt_option_fails_before_reading(tmp_path):
    with pytest.raises(DataError, match="data.contempt: 'maybe' is not keep, drop or a class to map it to"):
        load(tmp_path / "not-even-there.csv", contempt="maybe")
