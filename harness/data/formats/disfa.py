"""DISFA as distributed: per-frame action-unit intensities of 27 subjects' videos, read as
multi-label targets (a 0/1 matrix of frames × AUs) with no emotion labels.

``data.path`` is the DISFA folder::

    ActionUnit_Labels/SN001/SN001_au1.txt … SN001_au26.txt   lines 'frame,intensity': frames 1, 2, … in order,
                                                             intensity 0–5; AUs 1 2 4 5 6 9 12 15 17 20 25 26
    Videos_LeftCamera/LeftVideoSN001_comp.avi                the left-camera video: any video file whose name
                                                             holds SN001 (.avi .mp4 .mkv .mov .wmv)
    Images/SN001/00001.png …                                 or the frames extracted to images (.png .jpg .jpeg
                                                             .bmp; Frames/SN001/ works too): the frame number is
                                                             the last run of digits in the file name, from 1

Per subject, extracted frames win over the video when both are there: someone made them on purpose
(perhaps aligned), and they decode without reading a video through. Labels without a frame are
allowed (frames extracted at a step; a video that ends early is logged), a frame without a label
is not. Every label file and frame source is checked before the first frame is decoded.

An AU is present at intensity ≥ ``data.au_threshold``; ``data.action_units`` picks the AUs (columns
in that order, named ``AU<n>``); ``data.frame_step`` keeps frames 1, 1+n, 1+2n, …. Frames are
reduced as they are decoded (``frames.py``): the face crop of ``data.face_detect``, else the central
square at ``data.frame_size``; RGB. Subject ``SN001`` is subject 1; a sample's source is the image
file, or ``<video>#frame=<n>``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferbench.harness.data.dataset import UNLABELLED_CLASS
from ferbench.harness.data.formats.class_folders import entries, image_files, subfolders
from ferbench.harness.data.formats.common import NO_FACE, DataError, Decoded, no_face_found
from ferbench.harness.data.formats.frames import (FRAME_CHUNK, VIDEO_SUFFIXES, image_frames, reduced_side, reducer,
                                                   video_frames)
from ferbench.harness.data.formats.images import unreadable_image

DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
LABELS = "ActionUnit_Labels"
VIDEOS = "Videos_LeftCamera"
FRAME_FOLDERS = ("Images", "Frames")
MAX_INTENSITY = 5
SUBJECT_NAME = re.compile(r"^SN(\d+)$")
INTEGER = re.compile(r"^-?\d+$")

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """One subject's AU intensities and where its frames come from (a video, or numbered images)."""

    folder: Path  # ActionUnit_Labels/SN001
    intensities: np.ndarray  # (labelled frames, AUs) uint8; row i is frame i + 1
    label_file: Path  # its first AU file, named in messages
    video: Path | None = None
    images: dict[int, Path] | None = None  # frame number → image file

    @property
    def code(self) -> str:
        return self.folder.name

    @property
    def source(self) -> Path:
        return self.video if self.video is not None else next(iter(self.images.values())).parent


def checked_aus(numbers: list[int]) -> list[int]:
    """``data.action_units``, each one DISFA codes."""
    unknown = [number for number in numbers if number not in DISFA_AUS]
    if unknown:
        raise DataError(f"data.action_units: {', '.join(map(str, unknown))} not coded in DISFA (its AUs: "
                        f"{', '.join(map(str, DISFA_AUS))}); remove {'it' if len(unknown) == 1 else 'them'}")
    return list(numbers)


def intensities(path: Path) -> np.ndarray:
    """The intensities of frames 1, 2, … in one AU file; ``DataError`` naming the line otherwise."""
    values: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        where, expected = f"{path}: line {number}", len(values) + 1
        fields = [field.strip() for field in text.split(",")]
        if len(fields) != 2 or not all(INTEGER.match(field) for field in fields):
            raise DataError(f"{where}: {text!r} is not 'frame,intensity' (e.g. '{expected},0'); fix the line")
        frame, intensity = map(int, fields)
        if frame != expected:
            problem = (f"frame {expected} is missing (this line labels frame {frame})" if frame > expected
                       else f"frame {frame} after frame {expected - 1}")
            raise DataError(f"{where}: {problem}; label frames 1, 2, 3, … in order, one line each")
        if not 0 <= intensity <= MAX_INTENSITY:
            raise DataError(f"{where}: intensity {intensity} is outside DISFA's 0..{MAX_INTENSITY}; fix the line")
        values.append(intensity)
    if not values:
        raise DataError(f"{path}: no 'frame,intensity' lines; copy the file again from DISFA")
    return np.array(values, dtype=np.uint8)


def subject_labels(folder: Path, aus: list[int]) -> tuple[np.ndarray, Path]:
    """(intensities (frames, AUs), first AU file) of a subject's label folder."""
    columns: list[np.ndarray] = []
    files: list[Path] = []
    for au in aus:
        path = folder / f"{folder.name}_au{au}.txt"
        if not path.is_file():
            raise DataError(f"{folder}: no {path.name}; add it, or leave AU{au} out of data.action_units")
        columns.append(intensities(path))
        files.append(path)
        if len(columns[-1]) != len(columns[0]):
            raise DataError(f"{path}: labels {len(columns[-1])} frames but {files[0].name} labels {len(columns[0])}; "
                            "a subject's AU files must label the same frames, so fix the file that lacks lines")
    return np.stack(columns, axis=1), files[0]


def numbered_frames(folder: Path) -> dict[int, Path]:
    """Frame number → image in a folder of extracted frames (the last run of digits in each name)."""
    frames: dict[int, Path] = {}
    for image in image_files(folder)[0]:
        digits = re.findall(r"\d+", image.stem)
        if not digits:
            raise DataError(f"{image}: no frame number in the file name; name extracted frames by number (e.g. 00001.png) or move it")
        number = int(digits[-1])
        if number in frames:
            raise DataError(f"{image}: frame {number} again (also {frames[number].name}); keep one image per frame")
        frames[number] = image
    return dict(sorted(frames.items()))


def extracted_frames(root: Path, code: str) -> dict[int, Path] | None:
    """The subject's extracted frames under ``Images/`` or ``Frames/``, or None when it has none."""
    for name in FRAME_FOLDERS:
        folder = root / name / code
        if folder.is_dir():
            frames = numbered_frames(folder)
            if frames:
                return frames
    return None


def left_video(root: Path, code: str) -> Path | None:
    """The subject's video in ``Videos_LeftCamera/``: the one video file whose name holds ``code``."""
    folder = root / VIDEOS
    if not folder.is_dir():
        return None
    holds_code = re.compile(rf"{code}(?!\d)")
    found = [path for path in entries(folder) if path.suffix.lower() in VIDEO_SUFFIXES and holds_code.search(path.stem)]
    if len(found) > 1:
        raise DataError(f"{folder}: {len(found)} videos of {code} ({', '.join(path.name for path in found)}); keep one")
    return found[0] if found else None


def subject(root: Path, folder: Path, aus: list[int]) -> Subject:
    """One subject's labels and frame source, checked against each other."""
    if not SUBJECT_NAME.match(folder.name):
        raise DataError(f"{folder}: not a DISFA subject folder SN<number> (e.g. SN001); rename or remove it")
    labels, label_file = subject_labels(folder, aus)
    found = Subject(folder, labels, label_file, images=extracted_frames(root, folder.name))
    if found.images is None:
        found.video = left_video(root, folder.name)
    if found.images is None and found.video is None:
        raise DataError(f"{folder}: subject {folder.name} has no left-camera video ({root / VIDEOS}/LeftVideo{folder.name}_comp.avi) "
                        f"and no extracted frames ({root / FRAME_FOLDERS[0] / folder.name}/00001.png …); put either there, or remove {folder}")
    for number, image in (found.images or {}).items():
        if not 1 <= number <= len(labels):
            raise no_label(image, number, found)
    return found


def no_label(where: Path, number: int, owner: Subject) -> DataError:
    return DataError(f"{where}: frame {number} has no label ({owner.label_file} labels frames 1..{len(owner.intensities)}, "
                     "counted from 1); remove the frame, or add its labels")


def subjects(root: Path, aus: list[int]) -> list[Subject]:
    """Every subject under ``ActionUnit_Labels/``, in name order."""
    labels = root / LABELS
    if not labels.is_dir():
        raise DataError(f"{root}: no {LABELS}/ folder; point data.path at the DISFA folder holding {LABELS}/ and {VIDEOS}/")
    found = [subject(root, folder, aus) for folder in subfolders(labels)]
    if not found:
        raise DataError(f"{labels}: no subject folders; expected {labels}/SN001/SN001_au1.txt …")
    return found


def disfa_inputs(spec, root: Path) -> list[Path]:
    """What DISFA is read from, for the cache fingerprint: not the right-camera videos or landmarks."""
    inputs = [root / name for name in (LABELS, VIDEOS, *FRAME_FOLDERS) if (root / name).is_dir()]
    return inputs or [root]


class FrameSet:
    """The reduced frames and their facts, filled a chunk of full-size frames at a time into one
    array allocated up front (no second copy of the whole set)."""

    def __init__(self, spec, capacity: int) -> None:
        side = reduced_side(spec)
        self.reduce, self.strict, self.threshold = reducer(spec), spec.strict, spec.au_threshold
        self.images = np.empty((capacity, side, side, 3), dtype=np.uint8)
        self.sources: list[str] = []
        self.subjects: list[int] = []
        self.rows: list[np.ndarray] = []
        self.skipped: list[dict[str, str]] = []
        self.pending: list[tuple[np.ndarray, str, int, np.ndarray]] = []
        self.seen = 0  # frames added, kept or not

    def add(self, frame: np.ndarray | str, source: str, subject_id: int, intensities: np.ndarray) -> None:
        self.seen += 1
        if isinstance(frame, str):
            if self.strict:
                raise unreadable_image(source, frame)
            self.skipped.append({"path": source, "reason": frame})
            return
        self.pending.append((frame, source, subject_id, intensities))
        if len(self.pending) == FRAME_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        reduced, missed = self.reduce([item[0] for item in self.pending])
        dropped = set(missed)
        kept = [item for i, item in enumerate(self.pending) if i not in dropped]
        self.skipped += [{"path": self.pending[i][1], "reason": NO_FACE} for i in missed]
        start = len(self.sources)
        self.images[start : start + len(kept)] = reduced
        for _, source, subject_id, values in kept:
            self.sources.append(source)
            self.subjects.append(subject_id)
            self.rows.append(values >= self.threshold)
        self.pending = []

    def decoded(self, root: Path, aus: list[int], meta: dict) -> Decoded:
        self.flush()
        n = len(self.sources)
        if not n and any(item["reason"] == NO_FACE for item in self.skipped):
            raise no_face_found(root, self.seen)
        if not n:
            reason = f" ({self.skipped[0]['reason']})" if self.skipped else ""
            raise DataError(f"{root}: none of the {self.seen} frames kept can be read{reason}; check the files and data.frame_step")
        if self.skipped:
            meta["skipped"] = self.skipped
        return Decoded(
            images=self.images[:n], labels=np.full(n, UNLABELLED_CLASS), sources=np.array(self.sources),
            subjects=np.array(self.subjects, dtype=np.int64), action_units=np.array(self.rows, dtype=np.uint8),
            au_names=tuple(f"AU{au}" for au in aus), meta=meta,
        )


def read_frames(found: Subject, step: int, frames: FrameSet) -> int:
    """Decode one subject's kept frames into ``frames``; the number of its labelled frames without a video frame."""
    labelled = len(found.intensities)
    subject_id = int(SUBJECT_NAME.match(found.code).group(1))
    if found.images is not None:
        numbers = [number for number in found.images if (number - 1) % step == 0]
        paths = [found.images[number] for number in numbers]
        for number, path, frame in zip(numbers, paths, image_frames(paths)):
            frames.add(frame, str(path), subject_id, found.intensities[number - 1])
        return 0
    last = 0
    for last, frame in video_frames(found.video, lambda number: (number - 1) % step == 0):
        if last > labelled:
            raise no_label(found.video, last, found)
        if frame is not None:
            frames.add(frame, f"{found.video}#frame={last}", subject_id, found.intensities[last - 1])
    if not last:
        raise DataError(f"{found.video}: OpenCV reads no frame of this video; copy it again, or extract its frames to images")
    return labelled - last


def read_disfa(spec, root: Path) -> Decoded:
    """DISFA's frames with ``data.action_units`` present at ``data.au_threshold`` (see the module)."""
    aus = checked_aus(spec.action_units)
    found = subjects(root, aus)
    step = spec.frame_step
    frames = FrameSet(spec, capacity=sum(len(range(0, len(item.intensities), step)) for item in found))
    meta: dict = {"frame_sources": {}}
    for index, item in enumerate(found, start=1):
        before = frames.seen
        unseen = read_frames(item, step, frames)
        meta["frame_sources"][item.code] = str(item.source)
        if unseen:
            meta.setdefault("frames_without_video", {})[item.code] = unseen
            log.warning("data: DISFA %s: %s ends %d frame(s) before its labels do", item.code, item.source, unseen)
        log.info("data: DISFA %s (%d/%d): %d frames from %s", item.code, index, len(found), frames.seen - before, item.source)
    return frames.decoded(root, aus, meta)
