"""Decoded datasets cached as ``.npy`` arrays plus a ``manifest.json``, so that a study decodes a
real dataset once, not on every launch.

One folder per (source path, format, output-changing options) in
``$FERBENCH_CACHE_DIR/datasets/<format>-<key>/``. It is reused while every source file keeps its
size and modification time; otherwise it is rebuilt in place. Folders are written complete into a
temporary sibling and renamed, so a reader never sees half a cache and a failed load leaves none.
Arrays are loaded with ``allow_pickle=False``: a cache folder cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ferbench.cache_dirs import cache_dir
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.formats import READERS
from ferbench.harness.data.formats.common import NO_FACE, resolved

CACHE_LAYOUT = 2  # bump when the cached form or a loader's output changes
MANIFEST = "manifest.json"
ARRAY_FIELDS = ("images", "labels", "subjects", "action_units", "sources")
META_ARRAY_PREFIX = "meta."

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$FERBENCH_CACHE_DIR/datasets`` (default ``$XDG_CACHE_HOME/ferbench/datasets``, see ``ferbench.cache_dirs``)."""
    return cache_dir("datasets")


def ferbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferbench")
    except PackageNotFoundError:
        return "unknown"


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, except in the dataset cache (which may lie inside it)."""
    skip = cache_root().resolve()
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
        files += [Path(root) / name for name in names]
    return sorted(files)


def source_files(spec, inputs: list[Path]) -> list[Path]:
    """Every file the dataset is read from: the files in ``inputs`` and every file under its folders,
    plus the FERPlus labels."""
    files = [path for item in inputs for path in ([item] if item.is_file() else _walk(item))]
    if spec.ferplus_labels:
        files.append(resolved(spec.ferplus_labels))
    return files


def source_fingerprint(files: list[Path]) -> dict[str, Any]:
    """SHA-256 over the path, size and mtime of every file: cheap (no file is read), and any
    replaced, edited, added or removed file changes it."""
    digest = hashlib.sha256()
    total = 0
    for path in files:
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # gone: the reader reports it
            size, mtime = -1, -1
        total += max(size, 0)
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


def cache_options(spec, data_format: str) -> dict[str, Any]:
    """The data options that change the decoded arrays (``strict`` and ``cache`` do not), the
    format's own (``Reader.options``) included."""
    options = {
        "format": data_format,
        "contempt": spec.contempt,
        "class_map": dict(sorted(spec.class_map.items())),
        "ferplus_labels": str(resolved(spec.ferplus_labels)) if spec.ferplus_labels else None,
        "face_detect": spec.face_detect,
    }
    if spec.face_detect:
        options["face_size"] = spec.face_size
    options.update({key: getattr(spec, key) for key in READERS[data_format].options})
    return options


def cache_folder(source: Path, options: dict[str, Any]) -> Path:
    key = json.dumps({"layout": CACHE_LAYOUT, "source": str(source), "options": options}, sort_keys=True)
    return cache_root() / f"{options['format']}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def load_cache(folder: Path, expected: dict[str, Any]) -> FerDataset | None:
    """The cached dataset in ``folder`` if its manifest matches ``expected`` on every key, else None."""
    manifest = _read_manifest(folder)
    if manifest is None or any(manifest.get(key) != value for key, value in expected.items()):
        return None
    try:
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in manifest["arrays"]}
    except (OSError, ValueError):
        return None  # damaged: rebuilt by the caller
    meta = dict(manifest["meta"])
    meta.update({name[len(META_ARRAY_PREFIX):]: value for name, value in arrays.items() if name.startswith(META_ARRAY_PREFIX)})
    return FerDataset(
        name=manifest["name"], class_names=tuple(manifest["class_names"]), au_names=tuple(manifest["au_names"]), meta=meta,
        **{name: arrays.get(name) for name in ARRAY_FIELDS},
    )


def _arrays(dataset: FerDataset) -> dict[str, np.ndarray]:
    arrays = {name: getattr(dataset, name) for name in ARRAY_FIELDS if getattr(dataset, name) is not None}
    arrays.update({META_ARRAY_PREFIX + key: value for key, value in dataset.meta.items() if isinstance(value, np.ndarray)})
    return arrays


def write_cache(folder: Path, dataset: FerDataset, identity: dict[str, Any]) -> None:
    """Write ``dataset`` to ``folder`` atomically, replacing an outdated one there."""
    arrays = _arrays(dataset)
    manifest = {
        **identity,
        "name": dataset.name,
        "n_images": len(dataset),
        "class_names": list(dataset.class_names),
        "class_counts": dict(zip(dataset.class_names, map(int, dataset.class_counts()))),
        "image_shape": list(dataset.images.shape[1:]),
        "au_names": list(dataset.au_names),
        "arrays": sorted(arrays),
        "meta": {key: value for key, value in dataset.meta.items() if not isinstance(value, np.ndarray)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    outdated = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        for name, values in arrays.items():
            np.save(staging / f"{name}.npy", values, allow_pickle=False)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if folder.exists():
            os.rename(folder, outdated)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.exists():
                raise
            # another process wrote the same cache a moment ago: keep theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(outdated, ignore_errors=True)


def cached_dataset(spec, data_format: str, source: Path, inputs: list[Path], build: Callable[[], FerDataset]) -> FerDataset:
    """The dataset from the cache when its sources and options are unchanged, else ``build()``
    (whose errors propagate, leaving no cache) written to the cache.

    source: the resolved ``data.path``; inputs: the files and folders the reader takes data from.
    """
    options = cache_options(spec, data_format)
    folder = cache_folder(source, options)
    identity = {
        "cache_layout": CACHE_LAYOUT,
        "ferbench_version": ferbench_version(),
        "format": data_format,
        "source": str(source),
        "options": options,
        "fingerprint": source_fingerprint(source_files(spec, inputs)),
    }
    dataset = load_cache(folder, identity)
    unreadable = dataset is not None and any(item["reason"] != NO_FACE for item in dataset.meta.get("skipped", []))
    if dataset is not None and not (spec.strict and unreadable):  # strict: fail as a fresh read would
        log.info("data: cached %s", folder)
        return dataset
    dataset = build()
    try:
        write_cache(folder, dataset, identity)
        log.info("data: wrote cache %s", folder)
    except OSError as err:  # a full or read-only disk costs the next launch time, not this one
        log.warning("data: could not write the dataset cache %s (%s); continuing without it", folder, err)
    return dataset
