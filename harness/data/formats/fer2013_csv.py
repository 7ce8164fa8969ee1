"""FER2013 as distributed: a CSV of ``emotion,pixels,Usage`` (or Kaggle's ``icml_face_data.csv``
with the header ``emotion, Usage, pixels``), optionally relabelled by FERPlus.

The CSV is read by Arrow (multi-threaded, no per-row Python) and the pixel column is parsed in
place (``pixels.parse_pixel_column``), so the 300 MB file loads in about a second. Rows are
reported by their line in the file (the header is line 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ferbench.harness.data.dataset import FER2013_CLASSES
from ferbench.harness.data.formats.common import DataError, Decoded, resolved
from ferbench.harness.data.formats.ferplus import ferplus_labels
from ferbench.harness.data.formats.pixels import PixelProblem, parse_pixel_column

USAGES = ("Training", "PublicTest", "PrivateTest")
REQUIRED = ("emotion", "pixels")
_ORDER = ", ".join(f"{i} {name}" for i, name in enumerate(FER2013_CLASSES))


def header(path: Path) -> list[str]:
    """The column names of a CSV file's first line, as written (spaces kept)."""
    with open(path, "rb") as handle:
        first = handle.readline(1 << 16)
    return first.decode("utf-8-sig", errors="replace").rstrip("\r\n").split(",")


def _line(row: int) -> int:
    return row + 2


def _read_table(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """The CSV as strings, and canonical column name → column name as written."""
    raw = header(path)
    columns = {name.strip(): name for name in raw}
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected the header emotion,pixels,Usage (or icml_face_data.csv's emotion, Usage, pixels)")
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={name: pa.string() for name in raw}))
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0]
        raise DataError(f"{path}: not a readable FER2013 CSV ({reason}); fix the file") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows after the header; is this the right file?")
    return table, columns


def _is_int(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def _labels(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    text = pc.utf8_trim_whitespace(column)
    try:
        labels = pc.cast(text, pa.int64()).to_numpy()
        bad = np.flatnonzero((labels < 0) | (labels >= len(FER2013_CLASSES)))
    except pa.ArrowInvalid:  # not an integer somewhere
        labels, bad = None, [next((i for i, v in enumerate(text.to_pylist()) if not _is_int(v or "")), 0)]
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: line {_line(row)}: emotion {text[row].as_py()!r} is not an integer 0..6 ({_ORDER}); fix the row")
    return labels


def _pixels(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    first = (column[0].as_py() or "").split()
    side = math.isqrt(len(first))
    if not first or side * side != len(first):
        raise DataError(f"{path}: line 2: {len(first)} pixel values is not a square image (FER2013: 2304 = 48×48); fix the row")
    try:
        images = parse_pixel_column(column, len(first))
    except PixelProblem as problem:
        values = (column[problem.row].as_py() or "").split()
        if problem.detail == "non-numeric":
            token = next((v for v in values if not (v.isascii() and v.isdigit())), "?")
            detail = f"pixel value {token!r} is not an integer 0..255"
        elif problem.detail == "out of range":
            token = next((v for v in values if len(v) > 3 or int(v) > 255), "?")
            detail = f"pixel value {token} is outside 0..255"
        else:
            detail = f"{len(values)} pixel values, expected {len(first)} ({side}×{side}, like line 2)"
        raise DataError(f"{path}: line {_line(problem.row)}: {detail}; fix or delete the row") from None
    return images.reshape(-1, side, side)


def _usage(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    usage = pc.utf8_trim_whitespace(column).to_numpy(zero_copy_only=False).astype(str)
    bad = np.flatnonzero(~np.isin(usage, USAGES))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: line {_line(row)}: Usage {str(usage[row])!r} is not one of {', '.join(USAGES)}; fix the row")
    return usage


def read_fer2013(spec, path: Path) -> Decoded:
    """FER2013 (grayscale); ``Usage`` becomes the official split, FERPlus labels replace the
    original ones when ``data.ferplus_labels`` is set."""
    table, columns = _read_table(path)
    labels = np.array(FER2013_CLASSES)[_labels(table.column(columns["emotion"]), path)]
    images = _pixels(table.column(columns["pixels"]), path)
    usage = _usage(table.column(columns["Usage"]), path) if "Usage" in columns else None
    rows = np.arange(table.num_rows)
    sources = np.char.add(f"{path}:", (rows + 2).astype(str))
    decoded = Decoded(images=images, labels=labels, sources=sources, official_split=usage)
    if spec.ferplus_labels is None:
        return decoded
    ferplus = resolved(spec.ferplus_labels)
    names, dropped = ferplus_labels(ferplus, path, table.num_rows, usage)
    decoded.labels = names
    decoded.meta["ferplus"] = {"labels": str(ferplus), "dropped": dropped}
    return decoded.take(np.flatnonzero(names != ""))
