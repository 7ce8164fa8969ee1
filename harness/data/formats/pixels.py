"""Fast parsing of FER2013's pixel strings ("70 80 82 ...", one per CSV row) into uint8 rows.

FER2013 holds 82 million numbers as text. Splitting them in Python takes tens of seconds, so the
whole column is parsed as byte buffers with numpy: every number ends where a digit is not
followed by another digit, and its value is read from at most three digits before that end.
Chunks of rows are parsed on a thread pool (numpy releases the GIL). Problems are reported by row
index, so the caller can name the CSV line.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_ROWS_PER_CHUNK = 2048
_ZERO = ord("0")
# Byte classes: 0 anything else, 1 a digit, 2 whitespace (space, tab, CR, LF) between values.
_BYTE_CLASS = np.zeros(256, np.uint8)
_BYTE_CLASS[_ZERO : _ZERO + 10] = 1
_BYTE_CLASS[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = 2


@dataclass
class PixelProblem(Exception):
    """Row ``row`` (0-based) is not ``expected`` integers 0..255; ``detail`` says what it holds."""

    row: int
    detail: str


def _row_of(offsets: np.ndarray, position: int) -> int:
    return int(np.searchsorted(offsets, position, side="right") - 1)


def _parse_chunk(data: np.ndarray, offsets: np.ndarray, expected: int) -> np.ndarray:
    """Parse the rows whose bytes ``data`` spans (``offsets`` relative to it, one more than rows)."""
    rows = len(offsets) - 1
    if len(data) == 0:
        raise PixelProblem(0, "0 pixel values")
    byte_class = _BYTE_CLASS[data]
    bad = np.flatnonzero(byte_class == 0)
    if len(bad):
        raise PixelProblem(_row_of(offsets, int(bad[0])), "non-numeric")
    digits = data - np.uint8(_ZERO)
    is_digit = byte_class == 1
    starts, ends = offsets[:-1], offsets[1:]
    starts = starts[starts < len(data)]
    # prev[i]: byte i-1 is a digit of the same row; next[i]: byte i+1 is.
    prev = np.empty_like(is_digit)
    prev[0], prev[1:] = False, is_digit[:-1]
    prev[starts] = False
    follows = np.empty_like(is_digit)
    follows[-1:], follows[:-1] = False, is_digit[1:]
    follows[ends[ends > 0] - 1] = False
    last = np.flatnonzero(is_digit & ~follows)  # the last digit of every number
    counts = np.diff(np.searchsorted(last, offsets))
    wrong = np.flatnonzero(counts != expected)
    if len(wrong):
        raise PixelProblem(int(wrong[0]), f"{counts[wrong[0]]} pixel values")
    two = prev[last]
    three = two & prev[last - 1]
    values = digits[last].astype(np.uint16)
    values += 10 * digits[last - 1] * two
    values += 100 * digits[last - 2].astype(np.uint16) * three
    too_long = three & prev[last - 2]
    out_of_range = np.flatnonzero((values > 255) | too_long)
    if len(out_of_range):
        raise PixelProblem(int(out_of_range[0]) // expected, "out of range")
    return values.astype(np.uint8).reshape(rows, expected)


def _tasks(column: pa.ChunkedArray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, bytes, row offsets relative to those bytes) per slice of ``_ROWS_PER_CHUNK`` rows,
    read from the Arrow buffers in place (no copy of the 300 MB column)."""
    tasks, first = [], 0
    for chunk in column.chunks:
        offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        _, offset_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offset_buffer, offset_type)[chunk.offset : chunk.offset + len(chunk) + 1].astype(np.int64)
        data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
        for lo in range(0, len(chunk), _ROWS_PER_CHUNK):
            hi = min(lo + _ROWS_PER_CHUNK, len(chunk))
            tasks.append((first + lo, data[offsets[lo] : offsets[hi]], offsets[lo : hi + 1] - offsets[lo]))
        first += len(chunk)
    return tasks


def parse_pixel_column(column: pa.ChunkedArray, expected: int) -> np.ndarray:
    """uint8 (rows, expected) from an Arrow string column of space-separated grey values.

    Raises ``PixelProblem`` naming the first bad row (0-based) when a row is not ``expected``
    integers 0..255.
    """

    def parse(task: tuple[int, np.ndarray, np.ndarray]) -> np.ndarray:
        first, data, offsets = task
        try:
            return _parse_chunk(data, offsets, expected)
        except PixelProblem as problem:
            raise PixelProblem(first + problem.row, problem.detail) from None

    tasks = _tasks(column)
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(tasks)))) as pool:
        parts = list(pool.map(parse, tasks))
    return np.concatenate(parts) if parts else np.empty((0, expected), np.uint8)
