"""A multi-label CSV: an image path column plus one 0/1 column per label, so that BP4D's AUs, CelebA's
attributes or a lab's own annotations load without code::

    image,AU1,AU2,AU4,subject
    faces/0001.png,1,0,0,F001

``data.image_column`` (default ``image``) holds paths relative to the CSV's folder, or absolute.
``data.subject_column`` names the subject (default ``subject`` when the CSV has it): whole numbers are
kept, other names are numbered 1, 2, … in sorted order (``meta["subject_ids"]``). ``data.label_columns``
picks the labels (default every other column), named by their column. Lines are counted as in the
file (the header is line 1); blank lines are ignored. Images are decoded like the image-folder formats.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ferbench.harness.data.dataset import UNLABELLED_CLASS
from ferbench.harness.data.formats.common import DataError, Decoded
from ferbench.harness.data.formats.images import decode_sources

IMAGE_COLUMN = "image"  # data.image_column's default, which auto-detection looks for
DEFAULT_SUBJECT_COLUMN = "subject"
WHOLE_NUMBER = re.compile(r"^\d+$")


class Table:
    """The CSV's header and its non-blank rows (as stripped strings) with their line numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                self.header = [name.strip() for name in next(reader, [])]
                self.lines: list[int] = []
                rows: list[list[str]] = []
                for row in reader:
                    if not any(field.strip() for field in row):
                        continue
                    if len(row) != len(self.header):
                        raise DataError(f"{path}: line {reader.line_num}: {len(row)} fields but the header has "
                                        f"{len(self.header)}; fix the line")
                    self.lines.append(reader.line_num)
                    rows.append([field.strip() for field in row])
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path}: not a readable CSV ({err}); save it as UTF-8 CSV") from None
        if not self.header or not rows:
            raise DataError(f"{path}: no rows; expected a header such as image,AU1,AU2 and one line per image")
        doubled = sorted({name for name in self.header if self.header.count(name) > 1})
        if doubled:
            raise DataError(f"{path}: column(s) {', '.join(map(repr, doubled))} appear twice in the header; rename one")
        self.cells = np.array(rows, dtype=str)

    def column(self, name: str) -> np.ndarray:
        return self.cells[:, self.header.index(name)]

    def where(self, row: int, column: str) -> str:
        return f"{self.path}: line {self.lines[row]}: column {column!r}"

    def missing(self, key: str, names: list[str], fix: str) -> DataError | None:
        """The error for ``names`` (``data.<key>``) that are not columns, or None."""
        absent = [name for name in names if name not in self.header]
        if not absent:
            return None
        return DataError(f"data.{key}: {', '.join(map(repr, absent))} not a column of {self.path} "
                         f"(its columns: {', '.join(self.header)}); {fix}")


def subject_column(spec, table: Table) -> str | None:
    """``data.subject_column``, or ``subject`` when the CSV has one."""
    if spec.subject_column is None:
        return DEFAULT_SUBJECT_COLUMN if DEFAULT_SUBJECT_COLUMN in table.header else None
    error = table.missing("subject_column", [spec.subject_column], "fix it, or leave it unset")
    if error:
        raise error
    return spec.subject_column


def label_columns(spec, table: Table, taken: list[str]) -> list[str]:
    """``data.label_columns``, or every column that is not in ``taken`` (image and subject)."""
    if spec.label_columns is None:
        names = [name for name in table.header if name not in taken]
        if not names:
            raise DataError(f"{table.path}: no label column besides {', '.join(map(repr, taken))}; add one 0/1 column per label")
        return names
    error = table.missing("label_columns", list(spec.label_columns), "fix the list")
    if error:
        raise error
    overlap = [name for name in spec.label_columns if name in taken]
    if overlap:
        raise DataError(f"data.label_columns: {', '.join(map(repr, overlap))} is the image or subject column; remove it from the list")
    return list(spec.label_columns)


def image_paths(table: Table, column: str) -> list[Path]:
    """The image of every row: a path relative to the CSV's folder, or absolute; each must exist."""
    error = table.missing("image_column", [column], "name the image path column with --set data.image_column=<column>")
    if error:
        raise error
    paths = []
    for row, text in enumerate(table.column(column)):
        if not text:
            raise DataError(f"{table.where(row, column)}: empty; write the image's path (relative to {table.path.parent}) or delete the line")
        path = table.path.parent / Path(text).expanduser()
        if not path.exists():
            raise DataError(f"{table.where(row, column)}: image {path} does not exist; fix the path or delete the line")
        paths.append(path)
    return paths


def label_matrix(table: Table, names: list[str]) -> np.ndarray:
    """The 0/1 label columns as a uint8 matrix; ``DataError`` naming the first bad cell."""
    cells = np.stack([table.column(name) for name in names], axis=1)
    bad = ~np.isin(cells, ("0", "1"))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        value, where = str(cells[row, col]), table.where(row, names[col])
        if not value:
            raise DataError(f"{where}: empty; write 0 (absent) or 1 (present)")
        hint = " (a -1/1 file such as CelebA's: write 0 for -1)" if value == "-1" else ""
        raise DataError(f"{where}: {value!r} is not 0 or 1{hint}; fix the value")
    return (cells == "1").astype(np.uint8)


def subject_ids(table: Table, column: str, meta: dict) -> np.ndarray:
    """Subject ids: whole numbers as written, other names numbered 1, 2, … in sorted order."""
    names = table.column(column)
    empty = np.flatnonzero(names == "")
    if len(empty):
        raise DataError(f"{table.where(int(empty[0]), column)}: empty; write the subject, or unset data.subject_column")
    if all(WHOLE_NUMBER.match(name) for name in names):
        return names.astype(np.int64)
    unique, inverse = np.unique(names, return_inverse=True)
    meta["subject_ids"] = {str(name): number for number, name in enumerate(unique, start=1)}
    return inverse.astype(np.int64) + 1


def multilabel_inputs(spec, path: Path) -> list[Path]:
    """The CSV and the images it lists, for the cache fingerprint (they may lie anywhere)."""
    try:
        return [path, *image_paths(Table(path), spec.image_column)]
    except DataError:  # the reader reports it
        return [path]


def read_multilabel_csv(spec, path: Path) -> Decoded:
    """The images of a multi-label CSV with their 0/1 label matrix (see the module)."""
    table = Table(path)
    paths = image_paths(table, spec.image_column)
    subject = subject_column(spec, table)
    names = label_columns(spec, table, [spec.image_column] + ([subject] if subject else []))
    meta: dict = {}
    decoded = Decoded(
        images=[], labels=np.full(len(paths), UNLABELLED_CLASS), sources=np.array([str(p) for p in paths]),
        subjects=subject_ids(table, subject, meta) if subject else None,
        action_units=label_matrix(table, names), au_names=tuple(names), meta=meta,
    )
    return decode_sources(decoded, spec.strict)
