"""FERPlus relabelling of FER2013 (``fer2013new.csv``): ten annotators' votes per image.

The label is the emotion with the most votes. A row is dropped when FERPlus has no image for it
(empty ``Image name``), when "not a face" (NF) has at least as many votes as the top emotion, or
when the top emotion is tied or has no votes: such images have no single right answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferbench.harness.data.formats.common import DataError

# FERPlus column → canonical class, in the file's column order.
FERPLUS_EMOTIONS: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}
IMAGE_NAME, NOT_A_FACE = "Image name", "NF"


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"data.ferplus_labels: {path} does not exist; point it at FERPlus's fer2013new.csv")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:  # pandas raises several parser error types
        raise DataError(f"{path}: not a readable CSV ({err}); point data.ferplus_labels at fer2013new.csv") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (IMAGE_NAME, *FERPLUS_EMOTIONS, NOT_A_FACE) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected FERPlus's header Usage,Image name,neutral,…,contempt,unknown,NF")
    return frame


def _votes(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    votes = frame[columns].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    bad = votes.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {row + 2}: vote counts {frame[columns].iloc[row].tolist()} are not all numbers; fix the row")
    return votes.to_numpy(dtype=np.int64)


def ferplus_labels(path: Path, fer2013: Path, rows: int, usage: np.ndarray | None) -> tuple[np.ndarray, dict[str, int]]:
    """Canonical class per FER2013 row ('' where dropped) and the number dropped per reason.

    ``rows``: FER2013's row count; ``usage``: its Usage column (or None), checked against
    FERPlus's to catch files out of order.
    """
    frame = _read(path)
    if len(frame) != rows:
        raise DataError(f"{path}: {len(frame):,} rows but {fer2013} has {rows:,}; fer2013new.csv must have one row per FER2013 row, in the same order")
    if usage is not None and "Usage" in frame.columns:
        theirs = frame["Usage"].str.strip().to_numpy().astype(str)
        differ = np.flatnonzero(theirs != usage)
        if len(differ):
            row = int(differ[0])
            raise DataError(f"{path}: line {row + 2}: Usage {str(theirs[row])!r} but {fer2013}:{row + 2} has {str(usage[row])!r}; the files must list the same images in the same order")
    emotions = _votes(frame, list(FERPLUS_EMOTIONS), path)
    not_a_face = _votes(frame, [NOT_A_FACE], path)[:, 0]
    top = emotions.max(axis=1)
    no_image = (frame[IMAGE_NAME].str.strip() == "").to_numpy()
    face_doubt = ~no_image & (not_a_face > 0) & (not_a_face >= top)
    undecided = ~no_image & ~face_doubt & ((top == 0) | ((emotions == top[:, None]).sum(axis=1) > 1))
    names = np.array(list(FERPLUS_EMOTIONS.values()))[emotions.argmax(axis=1)]
    names[no_image | face_doubt | undecided] = ""
    dropped = {"no_image_name": int(no_image.sum()), "not_a_face": int(face_doubt.sum()), "tied_or_no_votes": int(undecided.sum())}
    return names, dropped
