"""Readers of the real FER dataset layouts, one module per layout, registered by format name.

Each reader takes the ``DataSpec`` and the resolved ``data.path`` and returns a ``Decoded``;
``ferbench.harness.data.loaders`` turns that into the canonical ``FerDataset`` (and caches it).
Multi-label readers (``disfa``, ``multilabel_csv``) also return the 0/1 label matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ferbench.harness.data.formats.class_folders import read_ckplus, read_fer2013_folders, read_folder
from ferbench.harness.data.formats.common import Decoded
from ferbench.harness.data.formats.disfa import disfa_inputs, read_disfa
from ferbench.harness.data.formats.fer2013_csv import read_fer2013
from ferbench.harness.data.formats.multilabel_csv import multilabel_inputs, read_multilabel_csv
from ferbench.harness.data.formats.rafdb import rafdb_inputs, read_rafdb


def path_itself(spec: Any, path: Path) -> list[Path]:
    return [path]


@dataclass(frozen=True)
class Reader:
    read: Callable[..., Decoded]
    takes: Literal["file", "folder", "either"]  # what data.path must be
    example: str
    inputs: Callable[[Any, Path], list[Path]] = path_itself  # (spec, path) → the files / folders read, for the cache
    options: tuple[str, ...] = ()  # DataSpec keys that change what it reads, for the cache key
    crops_faces: bool = False  # applies data.face_detect itself, frame by frame (frames too large to hold first)


READERS: dict[str, Reader] = {
    "fer2013": Reader(read_fer2013, "file", "/data/fer2013.csv"),
    "fer2013_folders": Reader(read_fer2013_folders, "folder", "/data/fer2013 (holding train/ and test/)"),
    "rafdb": Reader(read_rafdb, "either", "/data/RAF-DB/basic (holding EmoLabel/ and Image/aligned/)",
                    lambda spec, path: rafdb_inputs(path)),
    "ckplus": Reader(read_ckplus, "folder", "/data/CK+48 (holding anger/ … surprise/)", options=("ckplus_frames",)),
    "folder": Reader(read_folder, "folder", "/data/faces (holding one folder per class)"),
    "disfa": Reader(read_disfa, "folder", "/data/DISFA (holding ActionUnit_Labels/ and Videos_LeftCamera/ or Images/)",
                    disfa_inputs, ("action_units", "au_threshold", "frame_step", "frame_size"), crops_faces=True),
    "multilabel_csv": Reader(read_multilabel_csv, "file", "/data/bp4d/labels.csv (columns image,AU1,AU2,…[,subject])",
                             multilabel_inputs, ("image_column", "label_columns", "subject_column")),
}
