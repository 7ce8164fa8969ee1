"""Downloading pretrained weights: where each backbone's file comes from, and a safe ``fetch``.

Why a module of its own: the weights resolver (``ferbench.backbones.weights``) never touches the network,
so studies preflight offline in seconds; downloading is an explicit step (``ferbench weights
fetch``) that streams to a temporary file beside the target, verifies SHA-256 where a hash is
pinned, renames atomically (a reader never sees half a file) and, offline, fails within the
timeout with a message saying which file to place where.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from ferbench.backbones.registry import get_backbone_info
from ferbench.backbones.weights import weight_file_stem

DEEPFACE_HF_MIRROR = "https://huggingface.co/serengil/deepface/resolve/main"
HF_RESOLVE = "https://huggingface.co/{repo_id}/resolve/main/model.safetensors"
USER_AGENT = "ferbench-weights/0.1 (python-urllib)"
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 32 << 20  # smaller files download without progress lines

# File name in the weights folder → SHA-256 hex digest. Consulted by ``fetch_weights`` when present;
# add an entry only for a hash checked against the publisher's file, never a guessed one.
PINNED_SHA256: dict[str, str] = {}

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """No source could be downloaded (offline, unreachable, HTTP error); the message says what to do by hand."""


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's pretrained weights come from, and the file name they are stored under."""

    backbone: str
    filename: str  # the name ``resolve_pretrained`` looks for in a weights folder
    urls: tuple[str, ...]  # mirrors, tried in order


def weight_source(backbone: str) -> WeightSource | None:
    """The download source of ``backbone``'s pretrained weights, or None when none is published."""
    info = get_backbone_info(backbone)
    urls = [source.removeprefix("url:") for source in info.pretrained_sources if source.startswith("url:")]
    if urls:  # deepface's release files, plus its Hugging Face mirror of the same file
        mirrors = [f"{DEEPFACE_HF_MIRROR}/{url.rsplit('/', 1)[-1]}" for url in urls if "github.com/serengil/" in url]
        filename = info.weight_filename or urls[0].rsplit("/", 1)[-1]
        return WeightSource(backbone, filename, tuple(dict.fromkeys(urls + mirrors)))
    hub_ids = [source.removeprefix("hf-hub:") for source in info.pretrained_sources if source.startswith("hf-hub:")]
    if hub_ids:
        return WeightSource(backbone, f"{weight_file_stem(backbone)}.safetensors", tuple(HF_RESOLVE.format(repo_id=r) for r in hub_ids))
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Progress:
    """A notice (logging, INFO) about every 10% of a large download, so a 580 MB file is not a silent wait."""

    def __init__(self, label: str, total: int | None, url: str):
        self.label, self.total, self.next_percent = label, total, 10
        self.enabled = total is not None and total >= PROGRESS_MIN_BYTES
        if self.enabled:  # only once the server answered: an offline failure stays a single message
            log.info("  %s: downloading %.0f MB from %s", label, total / 1e6, url)

    def update(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        percent = 100 * done // self.total
        if percent >= self.next_percent:
            log.info("  %s: %d%% (%.0f of %.0f MB)", self.label, percent, done / 1e6, self.total / 1e6)
            self.next_percent = (percent // 10 + 1) * 10


def _stream(url: str, handle: BinaryIO, timeout_s: float, label: str) -> str:
    """Copy ``url`` into ``handle``; returns the SHA-256. ``timeout_s`` bounds connecting and every stall."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest, done = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress = _Progress(label, total, url)
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            handle.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
    if total is not None and done != total:
        raise OSError(f"connection closed after {done} of {total} bytes")
    handle.flush()
    os.fsync(handle.fileno())
    return digest.hexdigest()


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(err) or type(err).__name__


def fetch(
    url_or_urls: str | Sequence[str], target: str | Path, *, timeout_s: float = 30, expected_sha256: str | None = None
) -> str:
    """Download the first reachable of ``url_or_urls`` (mirrors, in order) to ``target``; returns its SHA-256.

    The file appears at ``target`` only complete and, with ``expected_sha256``, verified: a hash
    mismatch deletes the download and raises ValueError (a mirror serving other bytes is not a
    network hiccup to retry past). When every URL fails, raises DownloadError. DNS lookups follow
    the system resolver's own timeout.
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise ValueError("fetch: no URL given")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                got = _stream(url, handle, timeout_s, target.name)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError; ValueError: bad URL
            tmp.unlink(missing_ok=True)
            failures.append(f"{url} ({_reason(err)})")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if expected_sha256 and got != expected_sha256.lower():
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{url}: SHA-256 mismatch for {target.name}: expected {expected_sha256.lower()}, got {got}")
        os.replace(tmp, target)
        return got
    raise DownloadError(
        f"could not download {target.name}: tried {'; '.join(failures)}. "
        f"Offline? Download it on a machine with internet access and place it at {target}"
    )


def fetch_weights(
    backbone: str, weights_dir: str | Path, *, timeout_s: float = 30, mirror: str | None = None
) -> tuple[Path, str]:
    """Download ``backbone``'s pretrained weights into ``weights_dir`` under the name the resolver
    looks for, checking the pinned hash when there is one; returns (path, sha256).

    ``mirror`` (a base URL serving files under their weights-folder names, e.g. ``python -m
    http.server`` in a copy of a weights folder) replaces the published sources: for clusters
    whose nodes reach only an internal server.
    """
    source = weight_source(backbone)
    if source is None:
        raise ValueError(f"{backbone} has no published pretrained weights to download")
    urls = [f"{mirror.rstrip('/')}/{source.filename}"] if mirror else list(source.urls)
    target = Path(weights_dir).expanduser() / source.filename
    return target, fetch(urls, target, timeout_s=timeout_s, expected_sha256=PINNED_SHA256.get(source.filename))
