"""Multi-label (action-unit) data: the DISFA reader on a small copy of the real layout (one subject as
an MJPG video, one as extracted frames), the multi-label CSV reader, their cache round trips, and a
one-line error naming the file and line for every kind of bad input."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import write_image

from ferbench.harness.data import face_detect
from ferbench.harness.data.cache import cache_root
from ferbench.harness.data.dataset import ACTION_UNITS, UNLABELLED_CLASS
from ferbench.harness.data.formats.disfa import DISFA_AUS
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.spec import DataSpec

FRAMES = {"SN001": 6, "SN002": 5}  # labelled frames per subject; SN001 is a video, SN002 extracted images
VIDEO_SIZE = (64, 48)  # width, height: wider than high, like DISFA's 1024×768


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))


def load(path, data_format="auto", **options):
    return load_dataset(DataSpec(format=data_format, path=str(path), **{"cache": False, **options}))


def intensity(subject: str, frame: int, au: int) -> int:
    """The fixture's intensity of ``au`` in a frame: every value 0..5 occurs across frames and AUs."""
    return (frame + DISFA_AUS.index(au) + int(subject[2:])) % 6


def brightness(subject: str, frame: int) -> int:
    """The grey level of a fixture frame, distinct per subject and frame (MJPG keeps it within ±3)."""
    return 40 * int(subject[2:]) + 20 * frame


def write_labels(root: Path, subject: str, frames: int) -> None:
    folder = root / "ActionUnit_Labels" / subject
    folder.mkdir(parents=True)
    for au in DISFA_AUS:
        lines = [f"{frame},{intensity(subject, frame, au)}" for frame in range(1, frames + 1)]
        (folder / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")


def frame_pixels(subject: str, frame: int) -> np.ndarray:
    """A grey frame with white bands left and right of its central square (which must be cut away)."""
    width, height = VIDEO_SIZE
    pixels = np.full((height, width, 3), brightness(subject, frame), np.uint8)
    band = (width - height) // 2
    pixels[:, :band - 2] = pixels[:, width - band + 2:] = 255
    return pixels


def write_video(path: Path, subject: str, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, VIDEO_SIZE)
    assert writer.isOpened()
    for frame in range(1, frames + 1):
        writer.write(frame_pixels(subject, frame))
    writer.release()


def write_frames(folder: Path, subject: str, numbers) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame in numbers:
        cv2.imwrite(str(folder / f"{frame:05d}.png"), frame_pixels(subject, frame))


def write_disfa(root: Path) -> Path:
    """DISFA as distributed, two subjects: SN001 from the left-camera video, SN002 from extracted frames."""
    for subject, frames in FRAMES.items():
        write_labels(root, subject, frames)
    write_video(root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi", "SN001", FRAMES["SN001"])
    write_frames(root / "Images" / "SN002", "SN002", range(1, FRAMES["SN002"] + 1))
    return root


@pytest.fixture
def disfa(tmp_path) -> Path:
    return write_disfa(tmp_path / "DISFA")


def expected(frames: list[tuple[str, int]], aus=(1, 2, 4, 6, 9, 12, 25, 26), threshold=2) -> np.ndarray:
    return np.array([[intensity(s, f, au) >= threshold for au in aus] for s, f in frames], dtype=np.uint8)


def all_frames(step: int = 1) -> list[tuple[str, int]]:
    return [(subject, frame) for subject, n in FRAMES.items() for frame in range(1, n + 1, step)]


def grey_levels(dataset) -> list[int]:
    return [int(round(image.mean())) for image in dataset.images]


def assert_frames(dataset, frames: list[tuple[str, int]]) -> None:
    """Each image is the frame it claims to be (its grey level), with the white bands cut away."""
    assert np.abs(np.array(grey_levels(dataset)) - [brightness(s, f) for s, f in frames]).max() <= 3
    assert dataset.images.max() < 255 - 30


# ---- DISFA -------------------------------------------------------------------------------------


def test_disfa_reads_video_and_extracted_frames_with_aus_at_the_threshold(disfa, caplog):
    caplog.set_level(logging.INFO, logger="ferbench")
    dataset = load(disfa, frame_size=16)
    frames = all_frames()
    assert dataset.meta["format"] == "disfa" and dataset.images.shape == (11, 16, 16, 3)
    assert dataset.class_names == (UNLABELLED_CLASS,) and not dataset.labels.any()
    assert dataset.au_names == ACTION_UNITS and dataset.action_units.dtype == np.uint8
    assert np.array_equal(dataset.action_units, expected(frames))
    assert 0 < dataset.action_units.mean() < 1
    assert dataset.subjects.tolist() == [1] * 6 + [2] * 5
    video = disfa / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    assert dataset.sources[0] == f"{video}#frame=1" and dataset.sources[6] == str(disfa / "Images" / "SN002" / "00001.png")
    assert_frames(dataset, frames)
    progress = [r.getMessage() for r in caplog.records if r.name == "ferbench.harness.data.formats.disfa"]
    assert progress == [f"data: DISFA SN001 (1/2): 6 frames from {video}",
                        f"data: DISFA SN002 (2/2): 5 frames from {disfa / 'Images' / 'SN002'}"]


def test_disfa_threshold_au_choice_and_order(disfa):
    dataset = load(disfa, data_format="disfa", action_units=["AU26", 5, 1], au_threshold=4, frame_size=16)
    assert dataset.au_names == ("AU26", "AU5", "AU1")
    assert np.array_equal(dataset.action_units, expected(all_frames(), aus=(26, 5, 1), threshold=4))


def test_disfa_frame_step_keeps_frames_one_plus_multiples_of_n(disfa):
    dataset = load(disfa, frame_step=2, frame_size=16)
    frames = all_frames(step=2)  # SN001: 1, 3, 5; SN002: 1, 3, 5
    assert len(dataset) == 6 and np.array_equal(dataset.action_units, expected(frames))
    assert_frames(dataset, frames)
    assert dataset.sources[1].endswith("#frame=3") and dataset.subjects.tolist() == [1, 1, 1, 2, 2, 2]


def test_extracted_frames_win_over_the_video_and_may_be_a_subset(disfa):
    write_frames(disfa / "Frames" / "SN001", "SN001", [2, 4])  # frames extracted at a step
    dataset = load(disfa, frame_size=16)
    frames = [("SN001", 2), ("SN001", 4)] + all_frames()[6:]
    assert dataset.sources[0] == str(disfa / "Frames" / "SN001" / "00002.png")
    assert np.array_equal(dataset.action_units, expected(frames))
    assert_frames(dataset, frames)


def test_face_detection_without_any_face_says_so(disfa):
    fails(disfa, f"{disfa}: no face found in any of the 11 images; set data.face_detect=false", face_detect=True)


def test_face_detection_drops_the_au_rows_of_frames_without_a_face(disfa, monkeypatch):
    def crop_bright(images, size):  # a stand-in detector: a "face" in frames brighter than 110
        found = [i for i, image in enumerate(images) if image[:, image.shape[1] // 2].mean() > 110]
        crops = np.stack([np.full((size, size, 3), images[i][0, 32, 0], np.uint8) for i in found])
        return crops, [i for i in range(len(images)) if i not in found]

    monkeypatch.setattr(face_detect, "crop_faces", crop_bright)
    dataset = load(disfa, face_detect=True, face_size=20)
    frames = [(s, f) for s, f in all_frames() if brightness(s, f) > 110]
    assert dataset.images.shape == (len(frames), 20, 20, 3) and len(frames) == 7
    assert np.array_equal(dataset.action_units, expected(frames)) and grey_levels(dataset)[0] > 110
    assert len(dataset.meta["skipped"]) == 4 and {s["reason"] for s in dataset.meta["skipped"]} == {"no face found"}


def test_disfa_cache_round_trip_keeps_aus_and_rebuilds_for_another_threshold(disfa, caplog):
    caplog.set_level(logging.INFO, logger="ferbench")
    first = load(disfa, cache=True, frame_size=16)
    again = load(disfa, cache=True, frame_size=16)
    assert caplog.records[-1].getMessage().startswith("data: cached ")
    assert again.au_names == first.au_names == ACTION_UNITS and again.class_names == (UNLABELLED_CLASS,)
    for name in ("images", "labels", "subjects", "action_units", "sources"):
        assert np.array_equal(getattr(again, name), getattr(first, name)), name
    other = load(disfa, cache=True, frame_size=16, au_threshold=3)
    assert np.array_equal(other.action_units, expected(all_frames(), threshold=3))
    assert len(list(cache_root().iterdir())) == 2


def test_a_video_that_ends_before_its_labels_is_logged(disfa, caplog):
    write_video(disfa / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi", "SN001", 4)
    dataset = load(disfa, frame_size=16)
    assert len(dataset) == 9 and dataset.meta["frames_without_video"] == {"SN001": 2}
    assert "SN001" in caplog.text and "ends 2 frame(s) before its labels do" in caplog.text


def rewrite_line(path: Path, number: int, text: str | None) -> None:
    """Replace (or with None, delete) line ``number`` of a label file."""
    lines = path.read_text().splitlines()
    lines[number - 1 : number] = [] if text is None else [text]
    path.write_text("\n".join(lines) + "\n")


def au_file(root: Path, subject: str, au: int) -> Path:
    return root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt"


def fails(root: Path, message: str, **options) -> str:
    with pytest.raises(DataError) as caught:
        load(root, "disfa", frame_size=16, **options)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(message), text
    return text


def test_au_file_with_a_missing_frame_names_the_file_and_line(disfa):
    path = au_file(disfa, "SN002", 4)
    rewrite_line(path, 3, None)
    fails(disfa, f"{path}: line 3: frame 3 is missing (this line labels frame 4); label frames 1, 2, 3")


def test_intensity_outside_zero_to_five_names_the_file_and_line(disfa):
    path = au_file(disfa, "SN001", 12)
    rewrite_line(path, 5, "5,7")
    fails(disfa, f"{path}: line 5: intensity 7 is outside DISFA's 0..5; fix the line")


def test_malformed_label_line_names_the_file_and_line(disfa):
    path = au_file(disfa, "SN001", 1)
    rewrite_line(path, 2, "2;0")
    fails(disfa, f"{path}: line 2: '2;0' is not 'frame,intensity' (e.g. '2,0'); fix the line")


def test_extracted_frame_without_a_label_names_the_image(disfa):
    write_frames(disfa / "Images" / "SN002", "SN002", [6])
    image = disfa / "Images" / "SN002" / "00006.png"
    fails(disfa, f"{image}: frame 6 has no label ({au_file(disfa, 'SN002', 1)} labels frames 1..5, counted from 1); "
                 "remove the frame, or add its labels")


def test_video_frame_without_a_label_names_the_video_and_frame(disfa):
    for au in DISFA_AUS:
        rewrite_line(au_file(disfa, "SN001", au), 6, None)
    video = disfa / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    fails(disfa, f"{video}: frame 6 has no label ({au_file(disfa, 'SN001', 1)} labels frames 1..5")


def test_subject_without_video_or_frames_names_its_folder(disfa):
    write_labels(disfa, "SN003", 2)
    folder = disfa / "ActionUnit_Labels" / "SN003"
    fails(disfa, f"{folder}: subject SN003 has no left-camera video ({disfa / 'Videos_LeftCamera'}/LeftVideoSN003_comp.avi) "
                 f"and no extracted frames ({disfa / 'Images' / 'SN003'}/00001.png …); put either there")


def test_au_files_of_one_subject_with_different_frame_counts(disfa):
    path = au_file(disfa, "SN002", 2)
    rewrite_line(path, 5, None)
    fails(disfa, f"{path}: labels 4 frames but SN002_au1.txt labels 5; a subject's AU files must label the same frames")


def test_missing_au_file_unknown_au_and_unreadable_video(disfa):
    au_file(disfa, "SN001", 9).unlink()
    fails(disfa, f"{disfa / 'ActionUnit_Labels' / 'SN001'}: no SN001_au9.txt; add it, or leave AU9 out of data.action_units")
    fails(disfa, "data.action_units: 3, 7 not coded in DISFA (its AUs: 1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26); remove them",
          action_units=[1, 3, 7])
    video = disfa / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    video.write_bytes(b"not a video" * 100)
    fails(disfa, f"{video}: OpenCV cannot open this video", action_units=[1])


def test_strict_stops_at_an_unreadable_extracted_frame_otherwise_it_is_skipped(disfa):
    image = disfa / "Images" / "SN002" / "00003.png"
    image.write_bytes(b"broken")
    dataset = load(disfa, frame_size=16)
    frames = [frame for frame in all_frames() if frame != ("SN002", 3)]
    assert np.array_equal(dataset.action_units, expected(frames)) and dataset.meta["skipped"][0]["path"] == str(image)
    fails(disfa, f"{image}: unreadable image (", strict=True)


def test_disfa_needs_its_label_folder(tmp_path):
    fails(tmp_path, f"{tmp_path}: no ActionUnit_Labels/ folder; point data.path at the DISFA folder")


# ---- multi-label CSV ---------------------------------------------------------------------------


def write_csv(folder: Path, rows: list[str], header: str = "image,AU1,AU2,subject") -> Path:
    """A labels.csv in ``folder`` whose images are written first (the value of each is 10 × its row)."""
    for row, line in enumerate(rows):
        name = line.split(",")[0]
        if name and not name.startswith("missing"):
            write_image(Path(name) if Path(name).is_absolute() else folder / name, value=10 * row)
    path = folder / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


CSV_ROWS = ["faces/a.png,1,0,7", "faces/b.png,0,0,7", "faces/c.png,1,1,9"]


def test_multilabel_csv_reads_paths_labels_and_subjects(tmp_path):
    absolute = tmp_path / "elsewhere" / "d.png"
    csv = write_csv(tmp_path / "set", [*CSV_ROWS, f"{absolute},0,1,9"])
    dataset = load(csv)
    assert dataset.meta["format"] == "multilabel_csv" and dataset.images.shape == (4, 8, 8)
    assert dataset.au_names == ("AU1", "AU2") and dataset.class_names == (UNLABELLED_CLASS,) and not dataset.labels.any()
    assert dataset.action_units.tolist() == [[1, 0], [0, 0], [1, 1], [0, 1]]
    assert dataset.subjects.tolist() == [7, 7, 9, 9]
    assert dataset.sources.tolist() == [str(tmp_path / "set" / "faces" / f"{n}.png") for n in "abc"] + [str(absolute)]
    assert [int(image.min()) for image in dataset.images] == [0, 10, 20, 30]


def test_multilabel_csv_columns_by_option_and_named_subjects(tmp_path):
    csv = write_csv(tmp_path, ["x.png,F001,1,0,1", "y.png,M001,0,1,1", "z.png,F001,1,1,0"], header="path,who,Smiling,Bald,Young")
    dataset = load(csv, "multilabel_csv", image_column="path", subject_column="who", label_columns=["Young", "Smiling"])
    assert dataset.au_names == ("Young", "Smiling") and dataset.action_units.tolist() == [[1, 1], [1, 0], [0, 1]]
    assert dataset.subjects.tolist() == [1, 2, 1] and dataset.meta["subject_ids"] == {"F001": 1, "M001": 2}
    plain = load(csv, "multilabel_csv", image_column="path", label_columns="Bald")  # no column named subject
    assert plain.au_names == ("Bald",) and plain.subjects is None


def test_multilabel_csv_skips_an_unreadable_image_with_its_label_row(tmp_path):
    csv = write_csv(tmp_path, CSV_ROWS)
    (tmp_path / "faces" / "b.png").write_bytes(b"broken")
    dataset = load(csv)
    assert dataset.action_units.tolist() == [[1, 0], [1, 1]] and dataset.subjects.tolist() == [7, 9]
    assert dataset.meta["skipped"][0]["path"] == str(tmp_path / "faces" / "b.png")


def test_multilabel_csv_cache_round_trip(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ferbench")
    csv = write_csv(tmp_path, CSV_ROWS)
    first = load(csv, cache=True)
    again = load(csv, cache=True)
    assert caplog.records[-1].getMessage().startswith("data: cached ")
    assert again.au_names == ("AU1", "AU2") and np.array_equal(again.action_units, first.action_units)
    assert np.array_equal(again.subjects, first.subjects) and np.array_equal(again.images, first.images)
    write_image(tmp_path / "faces" / "a.png", value=99)  # an image the CSV lists changed: rebuilt
    assert int(load(csv, cache=True).images[0].min()) == 99


@pytest.mark.parametrize("row, message", [
    ("faces/d.png,2,0,9", "column 'AU1': '2' is not 0 or 1; fix the value"),
    ("faces/d.png,1,,9", "column 'AU2': empty; write 0 (absent) or 1 (present)"),
    ("faces/d.png,-1,1,9", "column 'AU1': '-1' is not 0 or 1 (a -1/1 file such as CelebA's: write 0 for -1); fix the value"),
    ("missing/d.png,1,0,9", "column 'image': image {folder}/missing/d.png does not exist; fix the path or delete the line"),
    (",1,0,9", "column 'image': empty; write the image's path (relative to {folder}) or delete the line"),
    ("faces/d.png,1,0,,", "5 fields but the header has 4; fix the line"),
    ("faces/d.png,1,0,", "column 'subject': empty; write the subject, or unset data.subject_column"),
])
def test_multilabel_csv_bad_values_name_the_line_and_column(tmp_path, row, message):
    csv = write_csv(tmp_path, [*CSV_ROWS, "", row])  # the blank line 5 is skipped but counted
    with pytest.raises(DataError) as caught:
        load(csv, "multilabel_csv")
    assert str(caught.value).replace(str(tmp_path), "{folder}") == "{folder}/labels.csv: line 6: " + message


def test_multilabel_csv_option_errors_name_the_columns(tmp_path):
    csv = write_csv(tmp_path, CSV_ROWS)
    with pytest.raises(DataError, match=re.escape(f"data.image_column: 'path' not a column of {csv} (its columns: image, AU1, AU2, subject)")):
        load(csv, "multilabel_csv", image_column="path")
    with pytest.raises(DataError, match=re.escape("data.label_columns: 'AU9' not a column of")):
        load(csv, "multilabel_csv", label_columns=["AU1", "AU9"])
    with pytest.raises(DataError, match=re.escape(f"{csv}: no label column besides 'image', 'subject'")):
        load(write_csv(tmp_path, ["faces/a.png,1"], header="image,subject"), "multilabel_csv")


def test_auto_detection_knows_both_layouts(disfa, tmp_path):
    assert load(disfa, frame_size=16).meta["format"] == "disfa"
    assert load(write_csv(tmp_path / "csv", CSV_ROWS)).meta["format"] == "multilabel_csv"
    shutil.rmtree(disfa / "Images")
    fails(disfa, f"{disfa / 'ActionUnit_Labels' / 'SN002'}: subject SN002 has no left-camera video")
