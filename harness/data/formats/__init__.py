"""Readers of the real FER dataset layouts, one module per layout, registered by format name.

Each reader takes the ``DataSpec`` and the resolved ``data.path`` and returns a ``Decoded``;
``ferbench.harness.data.loaders`` turns that into the canonical ``FerDataset`` (and caches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from ferbench.harness.data.formats.class_folders import read_ckplus, read_fer2013_folders, read_folder
from ferbench.harness.data.formats.common import Decoded
from ferbench.harness.data.formats.fer2013_csv import read_fer2013
from ferbench.harness.data.formats.rafdb import rafdb_inputs, read_rafdb


def path_itself(path: Path) -> list[Path]:
    return [path]


@dataclass(frozen=True)
class Reader:
    read: Callable[..., Decoded]
    takes: Literal["file", "folder", "either"]  # what data.path must be
    example: str
    inputs: Callable[[Path], list[Path]] = path_itself  # the files / folders read, for the cache


READERS: dict[str, Reader] = {
    "fer2013": Reader(read_fer2013, "file", "/data/fer2013.csv"),
    "fer2013_folders": Reader(read_fer2013_folders, "folder", "/data/fer2013 (holding train/ and test/)"),
    "rafdb": Reader(read_rafdb, "either", "/data/RAF-DB/basic (holding EmoLabel/ and Image/aligned/)", rafdb_inputs),
    "ckplus": Reader(read_ckplus, "folder", "/data/CK+48 (holding anger/ … surprise/)"),
    "folder": Reader(read_folder, "folder", "/data/faces (holding one folder per class)"),
}
