"""An external unlabeled pool for pseudo-labelling (``pseudo_label.unlabeled_path``).

The pool is read once on the driver and brought to the training data's form (its image size and
channel count), so the teacher predicts it exactly as it sees the training images. Labels, where
the source has any (class folders, an ``emotion`` column), are never read: the pool is unlabeled,
and the pseudo-labels' precision is reported as unknown.

Accepted: a folder of image files (searched recursively), or a CSV with a FER2013-style
``pixels`` column of square grey images (any other column is ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ferbench.harness.data.formats.common import DataError, resolved, unreadable
from ferbench.harness.data.formats.images import IMAGE_SUFFIXES, decode_files

KEY = "pseudo_label.unlabeled_path"
NOT_A_TARGET = -1  # the label of an image that has none; cross_entropy refuses it, so it is never trained on


@dataclass
class UnlabeledPool:
    """Pool images in the training data's form, and what was done to get them there."""

    images: np.ndarray  # uint8, the training images' shape after the first axis
    source: str
    notes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def _image_files(folder: Path) -> list[Path]:
    """Every entry with an image suffix that is not a folder: a broken link or a FIFO is then skipped
    and listed by decoding, not ignored unseen."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def _read_folder(folder: Path, strict: bool) -> tuple[list[np.ndarray], list[str], list[dict]]:
    files = _image_files(folder)
    if not files:
        raise DataError(f"{KEY}: {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); point it at a folder of face images")
    images, sources, skipped = [], [], []
    for path, result in zip(files, decode_files([str(p) for p in files])):
        if isinstance(result, str):
            if strict:
                raise DataError(f"{path}: unreadable image ({result}); replace or delete it, or set data.strict=false to skip it")
            skipped.append({"path": str(path), "reason": result})
        else:
            images.append(result)
            sources.append(str(path))
    if not images:
        raise DataError(f"{KEY}: none of the {len(files)} image files in {folder} can be read ({skipped[0]['reason']}); check the files")
    return images, sources, skipped


def _read_pixels_csv(path: Path) -> tuple[list[np.ndarray], list[str], list[dict]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from ferbench.harness.data.formats.fer2013_csv import header
    from ferbench.harness.data.formats.pixels import PixelProblem, parse_pixel_column

    columns = {name.strip(): name for name in header(path)}
    if "pixels" not in columns:
        raise DataError(f"{KEY}: {path} has no 'pixels' column (columns: {', '.join(columns)}); give a FER2013-style CSV or a folder of images")
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=[columns["pixels"]], column_types={columns["pixels"]: pa.string()}))
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]}); fix the file") from None
    column = table.column(0)
    if not len(column):
        raise DataError(f"{KEY}: {path} has no rows after the header")
    count = len((column[0].as_py() or "").split())
    side = math.isqrt(count)
    if not count or side * side != count:
        raise DataError(f"{path}: line 2: {count} pixel values is not a square image (FER2013: 2304 = 48×48); fix the row")
    try:
        rows = parse_pixel_column(column, count)
    except PixelProblem as problem:
        raise DataError(f"{path}: line {problem.row + 2}: {problem.detail}; every row needs {count} values 0..255") from None
    return list(rows.reshape(-1, side, side)), [f"{path}:{i + 2}" for i in range(len(rows))], []


def _to_training_form(image: np.ndarray, height: int, width: int, channels: int) -> tuple[np.ndarray, bool, bool]:
    """(image, resized, converted): ``image`` in the training data's size and colour mode."""
    picture = Image.fromarray(image)
    mode = "L" if channels == 1 else "RGB"
    converted = picture.mode != mode
    if converted:
        picture = picture.convert(mode)
    resized = picture.size != (width, height)
    if resized:
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(picture), resized, converted


def load_unlabeled_pool(path: str, *, image_shape: tuple[int, ...], strict: bool = False) -> UnlabeledPool:
    """Read the pool at ``path`` and bring every image to ``image_shape`` ((H, W) grey or (H, W, C)).

    Raises ``DataError`` naming the path and the fix when it is missing, empty or unreadable.
    """
    where = Path(path).expanduser().absolute()
    try:
        return _load(where, image_shape, strict)
    except OSError as err:
        raise DataError(f"{KEY}: {unreadable(Path(err.filename or where), err)}") from None


def check_pool_path(path: str) -> list[str]:
    """What ``load_unlabeled_pool`` would refuse before reading an image: a path that does not exist
    or is neither a folder nor a .csv file. Milliseconds, for preflight's first, cheap stage."""
    where = Path(path).expanduser().absolute()
    try:
        _existing(where)
    except DataError as err:
        return [str(err)]
    except OSError as err:
        return [f"{KEY}: {unreadable(Path(err.filename or where), err)}"]
    return []


def _existing(where: Path) -> Path:
    """``where`` resolved; ``DataError`` unless it is a folder or a .csv file."""
    where = resolved(where)
    if not where.exists():
        raise DataError(f"{KEY}: {where} does not exist; point it at a folder of face images or a CSV with a pixels column")
    if not where.is_dir() and where.suffix.lower() != ".csv":
        raise DataError(f"{KEY}: {where} is neither a folder of images nor a .csv file with a pixels column")
    return where


def _load(where: Path, image_shape: tuple[int, ...], strict: bool) -> UnlabeledPool:
    where = _existing(where)
    if where.is_dir():
        images, sources, skipped = _read_folder(where, strict)
    else:
        images, sources, skipped = _read_pixels_csv(where)
    out, notes = in_training_form(images, image_shape)
    return UnlabeledPool(images=out, source=str(where), notes={"source": str(where), **notes, "skipped": skipped})


def in_training_form(images, image_shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    """(images as one uint8 array of ``image_shape`` per image ((H, W) grey or (H, W, C)), notes): every image
    resized (bilinear) and converted to the training data's colour mode where it differs, and how many were.
    Shared by the unlabeled pool and cross-dataset evaluation (``ferbench.harness.study.cross_dataset``), so that
    a model sees outside images exactly as it saw its training images."""
    height, width = image_shape[:2]
    channels = image_shape[2] if len(image_shape) == 3 else 1
    out = np.empty((len(images), *image_shape), np.uint8)
    resized = converted = 0
    for i, image in enumerate(images):
        out[i], was_resized, was_converted = _to_training_form(image, height, width, channels)
        resized += was_resized
        converted += was_converted
    return out, {"images": len(out), "resized_to": [height, width], "resized": resized,
                 "converted_to": "grayscale" if channels == 1 else "rgb", "converted": converted}
