"""Image files to uint8 arrays: decoded in parallel, unreadable files skipped and reported, and the
set brought to one colour mode and one size so it stacks into a single array.

PIL's per-file overhead holds the GIL (on 2 cores a thread pool decodes 20,000 48×48 PNGs 2× slower
than one thread; two processes 1.3× faster), so large sets are decoded by a pool of processes, one
per CPU, in chunks of files.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import stat
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import numpy as np
from PIL import Image

from ferbench.harness.data.formats.common import DataError, Decoded, link_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
PARALLEL_FROM = 2000  # fewer files decode faster than a process pool starts
PROGRESS_FROM = 5000  # report progress every 10% above this many files
_CHUNK = 256

log = logging.getLogger(__name__)


def _not_a_file(path: str) -> str | None:
    """Why ``path`` is no regular file to open (a broken link, a FIFO that would block a reader …), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return link_problem(path) or f"{type(err).__name__}: {err.strerror or err}"
    return None if stat.S_ISREG(mode) else "not a regular file (a folder, FIFO, socket or device)"


def _decode(path: str) -> np.ndarray | str:
    """(H, W) grey or (H, W, 3) RGB uint8, or why the file cannot be read."""
    problem = _not_a_file(path)
    if problem:
        return problem
    try:
        with Image.open(path) as image:
            image.load()
            mode = "L" if image.mode in GREY_MODES else "RGB"
            return np.asarray(image if image.mode == mode else image.convert(mode))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError …
        return f"{type(err).__name__}: {err}"


def _decode_chunk(paths: list[str]) -> list[np.ndarray | str]:
    return [_decode(path) for path in paths]


def decode_files(paths: list[str]) -> list[np.ndarray | str]:
    """Every file decoded (an array) or not (the reason), in order; progress notices (logging) for big sets."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks))
    results: list[np.ndarray | str] = []
    next_report = 0.1

    def collect(chunk: list[np.ndarray | str]) -> None:
        nonlocal next_report
        results.extend(chunk)
        done = len(results) / len(paths)
        if len(paths) > PROGRESS_FROM and done >= next_report:
            log.info("data: decoded %s/%s images (%s)", f"{len(results):,}", f"{len(paths):,}", f"{done:.0%}")
            next_report = math.floor(done * 10 + 1) / 10

    if len(paths) >= PARALLEL_FROM and workers > 1:
        # spawn, not fork: the caller may run threads (Ray, Arrow), and forking those is unsafe.
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for chunk in pool.map(_decode_chunk, chunks):
                    collect(chunk)
            return results
        except BrokenProcessPool as err:  # e.g. a script without `if __name__ == "__main__":`
            log.warning("data: parallel decoding failed (%s); decoding in this process", err)
            results.clear()
    for chunk in chunks:
        collect(_decode_chunk(chunk))
    return results


def _to_mode(image: np.ndarray, rgb: bool) -> np.ndarray:
    if (image.ndim == 3) == rgb:
        return image
    return np.asarray(Image.fromarray(image).convert("RGB" if rgb else "L"))


def unreadable_image(source: str, reason: str) -> DataError:
    """The error of ``data.strict`` for an image that cannot be decoded."""
    return DataError(f"{source}: unreadable image ({reason}); replace or delete the file, or set data.strict=false to skip and report it")


def decode_sources(decoded: Decoded, strict: bool, force_rgb: bool = False) -> Decoded:
    """``decoded`` with its images read from its ``sources`` (file paths), in one colour mode.

    Unreadable files are skipped into ``meta["skipped"]``, or with ``strict`` raise ``DataError``.
    The mode is RGB with ``force_rgb`` (colour datasets such as RAF-DB), else the mode most files
    have; converted files are listed in ``meta["converted"]``.
    """
    results = decode_files([str(source) for source in decoded.sources])
    failed = {i: result for i, result in enumerate(results) if isinstance(result, str)}
    if failed and strict:
        index, reason = next(iter(failed.items()))
        raise unreadable_image(decoded.sources[index], reason)
    if failed and len(failed) == len(results):
        raise DataError(f"{decoded.sources[0]}: none of the {len(results)} image files can be read ({failed[0]}); check the files")
    decoded = replace(decoded, images=results).skip(failed) if failed else replace(decoded, images=results)
    colour = [image.ndim == 3 for image in decoded.images]
    rgb = force_rgb or sum(colour) * 2 >= len(colour)
    converted = [i for i, is_colour in enumerate(colour) if is_colour != rgb]
    if converted:
        decoded.images = [_to_mode(image, rgb) for image in decoded.images]
        decoded.meta["converted"] = {"to": "rgb" if rgb else "grayscale", "paths": [str(decoded.sources[i]) for i in converted]}
    return decoded


def stack_images(decoded: Decoded) -> Decoded:
    """One (N, H, W[, 3]) array: images not of the most common size are resized to it (bilinear)
    and listed in ``meta["resized"]``."""
    if isinstance(decoded.images, np.ndarray):
        return decoded
    height, width = Counter(image.shape[:2] for image in decoded.images).most_common(1)[0][0]
    resized = [i for i, image in enumerate(decoded.images) if image.shape[:2] != (height, width)]
    images = list(decoded.images)
    for i in resized:
        images[i] = np.asarray(Image.fromarray(images[i]).resize((width, height), Image.Resampling.BILINEAR))
    decoded = replace(decoded, images=np.stack(images))
    if resized:
        decoded.meta["resized"] = [str(decoded.sources[i]) for i in resized]
    return decoded
