"""Image-file layouts (fer2013_folders, folder, ckplus, rafdb), auto-detection, image decoding and
face cropping: small fixtures written here with PIL, plus the real CK+ 48×48 set when present."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import CANONICAL, RAFDB_LIST, by_value, write_class_tree, write_fer_csv, write_image, write_rafdb
from PIL import Image

from ferbench.harness.data.formats.images import decode_files
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.spec import DataSpec

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"


def load(path, data_format="auto", **options):
    return load_dataset(DataSpec(format=data_format, path=str(path), cache=False, **options))


def names(dataset) -> list[str]:
    return [dataset.class_names[label] for label in dataset.labels]


def value_class(dataset) -> list[str]:
    """The class each image's pixels were written for (``write_image`` value = 10 × class index)."""
    return [CANONICAL[int(image.min()) // 10] for image in dataset.images]


# ---- fer2013_folders -------------------------------------------------------------------------


def test_fer2013_folders_map_classes_by_name_not_alphabetical_order(tmp_path):
    write_class_tree(tmp_path / "train", {"angry": 2, "neutral": 3, "sad": 1}, by_value)
    write_class_tree(tmp_path / "test", {"neutral": 1, "happy": 2}, by_value)
    dataset = load(tmp_path, "fer2013_folders")
    # Alphabetically neutral would be 2 of (angry, happy, neutral, sad); canonically it is last.
    assert dataset.class_names == ("angry", "happy", "sad", "neutral")
    assert names(dataset) == value_class(dataset)
    assert names(dataset) == ["angry"] * 2 + ["neutral"] * 3 + ["sad", "happy", "happy", "neutral"]
    assert list(dataset.meta["official_split"]) == ["train"] * 6 + ["test"] * 3
    assert dataset.sources[0] == str(tmp_path / "train" / "angry" / "000.png")
    assert dataset.images.shape == (9, 8, 8) and dataset.meta["format"] == "fer2013_folders"


def test_fer2013_folders_need_train_and_test(tmp_path):
    write_class_tree(tmp_path / "train", {"happy": 1})
    with pytest.raises(DataError, match=rf"^{tmp_path}: no test/ folder; fer2013_folders expects {tmp_path}/train/<class>/ and"):
        load(tmp_path, "fer2013_folders")


# ---- folder ----------------------------------------------------------------------------------


def test_folder_maps_synonyms_case_insensitively_and_class_map(tmp_path):
    write_class_tree(tmp_path, {"Anger": 1, "HAPPINESS": 2, "surprised": 1, "joy": 1, "sadness": 1}, by_value)
    (tmp_path / "joy" / "notes.txt").write_text("not an image")
    dataset = load(tmp_path, "folder", class_map={"joy": "happy"})
    assert dataset.class_names == ("angry", "happy", "sad", "surprise")
    assert sorted(names(dataset)) == ["angry", "happy", "happy", "happy", "sad", "surprise"]
    assert names(dataset) == value_class(dataset)
    assert dataset.meta["ignored"] == [str(tmp_path / "joy" / "notes.txt")]
    assert "official_split" not in dataset.meta and dataset.subjects is None


def test_folder_with_an_unknown_class_says_how_to_map_it(tmp_path):
    write_class_tree(tmp_path, {"happy": 1, "joy": 1})
    with pytest.raises(DataError, match=rf"^{tmp_path}: class folder 'joy' is not a known emotion; map it with --set data.class_map.joy=<class>"):
        load(tmp_path, "folder")
    with pytest.raises(DataError, match=r"^data.class_map.joy: 'glee' is not a class; use one of angry, "):
        load(tmp_path, "folder", class_map={"joy": "glee"})


def test_empty_class_folder_is_named(tmp_path):
    write_class_tree(tmp_path, {"happy": 1})
    (tmp_path / "sad").mkdir()
    (tmp_path / "sad" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'sad'}: empty class folder \(no \*.png, \*.jpg, \*.jpeg, \*.bmp files\); add its images or remove the folder"):
        load(tmp_path, "folder")


def test_folder_without_class_folders(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match=rf"^{tmp_path}: no class folders; expected <root>/<class>/"):
        load(tmp_path, "folder")


# ---- ckplus ----------------------------------------------------------------------------------


@pytest.fixture
def ckplus(tmp_path) -> Path:
    for folder, files in {
        "anger": ["S005_001_00000011.png", "S010_002_00000014.png"],
        "contempt": ["S138_008_00000009.png"],
        "happy": ["S005_003_00000020.png"],
    }.items():
        for name in files:
            write_image(tmp_path / folder / name, by_value(folder))
    return tmp_path


def test_ckplus_subject_ids_come_from_file_names(ckplus):
    dataset = load(ckplus, "ckplus")
    assert names(dataset) == ["angry", "angry", "contempt", "happy"] == value_class(dataset)
    assert dataset.class_names == ("angry", "happy", "contempt")
    assert dataset.subjects.dtype == np.int64 and list(dataset.subjects) == [5, 10, 138, 5]


@pytest.mark.parametrize(
    "contempt, expected, subjects",
    [("keep", ["angry", "angry", "contempt", "happy"], [5, 10, 138, 5]),
     ("drop", ["angry", "angry", "happy"], [5, 10, 5]),
     ("happy", ["angry", "angry", "happy", "happy"], [5, 10, 138, 5]),
     ("Happiness", ["angry", "angry", "happy", "happy"], [5, 10, 138, 5])],
)
def test_ckplus_contempt_keep_drop_or_map(ckplus, contempt, expected, subjects):
    dataset = load(ckplus, "ckplus", contempt=contempt)
    assert names(dataset) == expected and list(dataset.subjects) == subjects
    assert len(dataset.sources) == len(expected)


def test_ckplus_file_without_subject_is_named(ckplus):
    write_image(ckplus / "happy" / "smile.png")
    with pytest.raises(DataError, match=rf"^{ckplus / 'happy' / 'smile.png'}: not a CK\+ file name S<subject>_<sequence>_<frame>.png; .*data.format=folder"):
        load(ckplus, "ckplus")


@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48x48 set is not at {CKPLUS48}")
def test_real_ckplus48_folder():
    dataset = load(CKPLUS48)
    assert dataset.meta["format"] == "ckplus"
    assert dataset.images.shape == (981, 48, 48) and dataset.images.dtype == np.uint8
    counts = dict(zip(dataset.class_names, dataset.class_counts().tolist()))
    assert counts == {"angry": 135, "disgust": 177, "fear": 75, "happy": 207, "sad": 84, "surprise": 249, "contempt": 54}
    assert len(np.unique(dataset.subjects)) == 118
    assert all(Path(source).name.startswith(f"S{subject:03d}_") for source, subject in zip(dataset.sources, dataset.subjects))


# ---- rafdb -----------------------------------------------------------------------------------

def test_rafdb_labels_split_colour_and_sources(tmp_path):
    write_rafdb(tmp_path)
    dataset = load(tmp_path, "rafdb")
    assert names(dataset) == ["sad", "surprise", "neutral", "happy"]
    assert dataset.class_names == ("happy", "sad", "surprise", "neutral")
    assert list(dataset.meta["official_split"]) == ["train", "train", "test", "test"]
    assert dataset.images.shape == (4, 10, 10, 3)
    assert dataset.sources[0] == str(tmp_path / "Image" / "aligned" / "train_00001_aligned.jpg")


def test_rafdb_list_file_given_directly_and_grey_images_made_rgb(tmp_path):
    write_rafdb(tmp_path, grey=("test_0001",))
    listing = tmp_path / "EmoLabel" / "list_patition_label.txt"
    dataset = load(listing)
    assert dataset.meta["format"] == "rafdb" and dataset.images.shape == (4, 10, 10, 3)
    assert dataset.meta["converted"] == {"to": "rgb", "paths": [str(tmp_path / "Image" / "aligned" / "test_0001_aligned.jpg")]}


def test_rafdb_entry_without_its_image_names_line_and_path(tmp_path):
    write_rafdb(tmp_path)
    (tmp_path / "Image" / "aligned" / "test_0001_aligned.jpg").unlink()
    listing = tmp_path / "EmoLabel" / "list_patition_label.txt"
    missing = tmp_path / "Image" / "aligned" / "test_0001_aligned.jpg"
    with pytest.raises(DataError, match=rf"^{listing}: line 3: image {missing} is missing; put the aligned image there or delete the line"):
        load(tmp_path, "rafdb")


@pytest.mark.parametrize("line, expected", [
    ("train_00003.jpg 8", "line 3: label '8' is not 1..7 (1 Surprise, 2 Fear"),
    ("train_00003.jpg", "line 3: 'train_00003.jpg' is not '<image name> <label>'"),
    ("val_00003.jpg 1", "line 3: image name 'val_00003.jpg' starts with neither train_ nor test_"),
])
def test_rafdb_bad_list_line_is_named(tmp_path, line, expected):
    write_rafdb(tmp_path, RAFDB_LIST[:2])
    listing = tmp_path / "EmoLabel" / "list_patition_label.txt"
    listing.write_text(listing.read_text() + line + "\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{listing}: {expected}")):
        load(tmp_path, "rafdb")


def test_rafdb_without_list_or_images(tmp_path):
    with pytest.raises(DataError, match=r"no EmoLabel/list_patition_label.txt; point data.path at the RAF-DB basic folder"):
        load(tmp_path, "rafdb")
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    with pytest.raises(DataError, match=r"no aligned image folder next to it; tried .*Image/aligned"):
        load(tmp_path, "rafdb")


# ---- decoding: unreadable files, sizes and modes ---------------------------------------------


def test_unreadable_and_truncated_images_are_skipped_and_reported(tmp_path):
    write_class_tree(tmp_path, {"happy": 2, "sad": 2}, by_value)
    truncated = tmp_path / "sad" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage = tmp_path / "happy" / "002.jpg"
    garbage.write_text("not a jpeg")
    dataset = load(tmp_path, "folder")
    assert names(dataset) == ["happy", "happy", "sad"] == value_class(dataset)
    skipped = {item["path"]: item["reason"] for item in dataset.meta["skipped"]}
    assert set(skipped) == {str(truncated), str(garbage)} and all(skipped.values())
    with pytest.raises(DataError, match=rf"^{garbage}: unreadable image \(.+\); replace or delete the file, or set data.strict=false"):
        load(tmp_path, "folder", strict=True)


def test_odd_sizes_are_resized_to_the_most_common_and_listed(tmp_path):
    write_class_tree(tmp_path, {"happy": 3}, by_value)
    odd = tmp_path / "happy" / "big.png"
    write_image(odd, by_value("happy"), size=(16, 12))
    dataset = load(tmp_path, "folder")
    assert dataset.images.shape == (4, 8, 8) and dataset.meta["resized"] == [str(odd)]


def test_mixed_modes_become_the_majority_mode(tmp_path):
    write_class_tree(tmp_path, {"happy": 3}, by_value)
    colour = tmp_path / "happy" / "colour.png"
    write_image(colour, 30, colour=True)
    dataset = load(tmp_path, "folder")
    assert dataset.images.shape == (4, 8, 8)
    assert dataset.meta["converted"] == {"to": "grayscale", "paths": [str(colour)]}
    expected = np.asarray(Image.open(colour).convert("L"))
    np.testing.assert_array_equal(dataset.images[list(dataset.sources).index(str(colour))], expected)
    for i in range(4):
        write_image(tmp_path / "happy" / f"c{i}.bmp", 30, colour=True)
    assert load(tmp_path, "folder").images.shape == (8, 8, 8, 3)


def test_process_pool_decoding_keeps_file_order(tmp_path):
    paths = [tmp_path / f"{i:04d}.png" for i in range(2100)]  # above PARALLEL_FROM
    written = [write_image(path, i % 250, size=(4, 4)) for i, path in enumerate(paths)]
    (tmp_path / "bad.png").write_text("x")
    results = decode_files([str(p) for p in paths] + [str(tmp_path / "bad.png")])
    assert all(np.array_equal(a, b) for a, b in zip(results, written)) and isinstance(results[-1], str)


# ---- auto-detection --------------------------------------------------------------------------


def test_auto_detects_every_format_and_says_so(tmp_path, caplog):
    caplog.set_level("INFO", logger="ferbench")

    write_fer_csv(tmp_path / "fer.csv", [0, 3])
    write_class_tree(tmp_path / "ferdirs" / "train", {"happy": 1})
    write_class_tree(tmp_path / "ferdirs" / "test", {"sad": 1})
    write_rafdb(tmp_path / "raf")
    write_class_tree(tmp_path / "ck", {"anger": 1, "contempt": 1}, name="S005_001_{i:08d}.png")
    write_class_tree(tmp_path / "faces", {"anger": 1, "joy": 1}, name="img{i}.png")
    cases = {
        tmp_path / "fer.csv": "fer2013", tmp_path / "ferdirs": "fer2013_folders", tmp_path / "raf": "rafdb",
        tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt": "rafdb", tmp_path / "ck": "ckplus", tmp_path / "faces": "folder",
    }
    for path, expected in cases.items():
        dataset = load(path, class_map={"joy": "happy"})
        assert dataset.meta["format"] == expected == dataset.name, path
        assert [r.getMessage() for r in caplog.records if r.name.startswith("ferbench")] == [f"data: detected format {expected} in {path}"]
        caplog.clear()


def test_auto_on_an_unknown_layout_lists_the_known_ones(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    for path in (tmp_path / "notes.txt", tmp_path):
        with pytest.raises(DataError, match=rf"^{path}: cannot detect the dataset format; expected a FER2013 CSV .* Set data.format explicitly"):
            load(path)


# ---- face detection --------------------------------------------------------------------------


@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48x48 set is not at {CKPLUS48}")
def test_face_detect_crops_faces_and_skips_images_without_one(tmp_path):
    faces = sorted(CKPLUS48.glob("happy/*.png"))[:2]
    (tmp_path / "happy").mkdir()
    for i, face in enumerate(faces):  # real faces upscaled into larger canvases of two sizes
        canvas = np.full((160 + 40 * i, 200), 128, np.uint8)
        canvas[20:132, 40:152] = np.asarray(Image.open(face).resize((112, 112), Image.Resampling.BICUBIC))
        Image.fromarray(canvas).save(tmp_path / "happy" / f"{i}.png")
    write_image(tmp_path / "happy" / "blank.png", 90, size=(160, 200))
    dataset = load(tmp_path, "folder", face_detect=True, face_size=40)
    assert dataset.images.shape == (2, 40, 40)
    assert list(dataset.sources) == [str(tmp_path / "happy" / "0.png"), str(tmp_path / "happy" / "1.png")]
    assert dataset.meta["skipped"] == [{"path": str(tmp_path / "happy" / "blank.png"), "reason": "no face found"}]
    assert "resized" not in dataset.meta
