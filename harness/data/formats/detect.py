"""``data.format: auto``: which layout a path holds, decided from names alone (nothing is decoded)."""

from __future__ import annotations

from pathlib import Path

from ferbench.harness.data.formats.class_folders import CKPLUS_NAME, FER2013_SPLITS, image_files, subfolders
from ferbench.harness.data.formats.common import DataError
from ferbench.harness.data.formats.disfa import LABELS as DISFA_LABELS
from ferbench.harness.data.formats.fer2013_csv import REQUIRED, header
from ferbench.harness.data.formats.multilabel_csv import IMAGE_COLUMN
from ferbench.harness.data.formats.rafdb import LIST_NAME, list_file

LAYOUTS = (
    "a FER2013 CSV with emotion and pixels columns; a CSV with an image column and 0/1 label columns (multilabel_csv); "
    "a RAF-DB folder with EmoLabel/list_patition_label.txt; a DISFA folder with ActionUnit_Labels/; "
    "a folder with train/ and test/ class folders (fer2013_folders); class folders of images (ckplus, folder)"
)


def detect_format(path: Path) -> str:
    """The format name of ``path``; ``DataError`` listing the layouts it knows otherwise."""
    if path.is_file():
        if path.name == LIST_NAME:
            return "rafdb"
        columns = {name.strip() for name in header(path)}
        if set(REQUIRED) <= columns:
            return "fer2013"
        if IMAGE_COLUMN in columns and len(columns) > 1:
            return "multilabel_csv"
    elif list_file(path) is not None:
        return "rafdb"
    elif (path / DISFA_LABELS).is_dir():
        return "disfa"
    elif path.is_dir():
        folders = subfolders(path)
        if set(FER2013_SPLITS) <= {folder.name.lower() for folder in folders}:
            return "fer2013_folders"
        images = [image for folder in folders for image in image_files(folder)[0]]
        if images:
            return "ckplus" if all(CKPLUS_NAME.match(image.stem) for image in images) else "folder"
    raise DataError(f"{path}: cannot detect the dataset format; expected {LAYOUTS}. Set data.format explicitly")
