"""Downloading pretrained weights: where each backbone's file comes from, and a safe ``fetch``.

Why a module of its own: the weights resolver (``ferbench.backbones.weights``) never touches the network,
so studies preflight offline in seconds; downloading is an explicit step (``ferbench weights
fetch``) that streams to a temporary file beside the target, verifies SHA-256 where a hash is
pinned, renames atomically (a reader never sees half a file), records the hash in the weights
folder's ledger (``ferbench.backbones.integrity``) and, offline, fails within the timeout with a
message saying which file to place where. ``timm:hf-hub:ORG/REPO`` backbones are fetched with
huggingface_hub into the Hugging Face cache, checked against the Hub's LFS hash.
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

from ferbench.backbones import hf_hub
from ferbench.backbones.integrity import (
    PINNED_SHA256, check_weight_file, hub_blob, published_sha256, record_weight_file, sha256_file,
)
from ferbench.backbones.registry import get_backbone_info
from ferbench.backbones.weights import default_weights_dir, weight_file_stem

__all__ = ["PINNED_SHA256", "DownloadError", "WeightSource", "fetch", "fetch_weights", "present_weights", "sha256_file",
           "weight_source"]

DEEPFACE_HF_MIRROR = "https://huggingface.co/serengil/deepface/resolve/main"
HF_RESOLVE = "https://huggingface.co/{repo_id}/resolve/main/model.safetensors"
USER_AGENT = "ferbench-weights/0.1 (python-urllib)"
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 32 << 20  # smaller files download without progress lines

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """No source could be downloaded (offline, unreachable, HTTP error); the message says what to do by hand."""


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's pretrained weights come from, and the file name they are stored under."""

    backbone: str
    filename: str  # the name ``resolve_pretrained`` looks for in a weights folder
    urls: tuple[str, ...]  # mirrors, tried in order
    hub_repo: str | None = None  # a timm:hf-hub: backbone's repository: fetched with huggingface_hub instead


def weight_source(backbone: str) -> WeightSource | None:
    """The download source of ``backbone``'s pretrained weights, or None when none is published
    (for a Hub backbone answered from its name alone: its config may not be here yet)."""
    repo_id = hf_hub.hub_repo_id(backbone)
    if repo_id:
        return WeightSource(backbone, f"{weight_file_stem(backbone)}.safetensors", (HF_RESOLVE.format(repo_id=repo_id),), repo_id)
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
    looks for, checking the pinned hash when there is one and recording the hash in the folder's
    ledger; returns (path, sha256).

    ``mirror`` (a base URL serving files under their weights-folder names, e.g. ``python -m
    http.server`` in a copy of a weights folder) replaces the published sources: for clusters
    whose nodes reach only an internal server. A Hub backbone goes to the Hugging Face cache
    instead (``fetch_hub_weights``; ``mirror`` is then a Hub endpoint, as ``HF_ENDPOINT``).
    """
    source = weight_source(backbone)
    if source is None:
        raise ValueError(f"{backbone} has no published pretrained weights to download")
    if source.hub_repo:
        return fetch_hub_weights(backbone, source.hub_repo, timeout_s=timeout_s, endpoint=mirror)
    urls = [f"{mirror.rstrip('/')}/{source.filename}"] if mirror else list(source.urls)
    target = Path(weights_dir).expanduser() / source.filename
    sha256 = fetch(urls, target, timeout_s=timeout_s, expected_sha256=PINNED_SHA256.get(source.filename))
    record_weight_file(target, target.parent, "downloaded", sha256)
    return target, sha256


def fetch_hub_weights(backbone: str, repo_id: str, *, timeout_s: float = 30, endpoint: str | None = None
                      ) -> tuple[Path, str]:
    """Bring a Hub repository's ``config.json`` and weights into the Hugging Face cache (each only
    when missing), check the weights against the Hub's LFS hash, record it in the default weights
    folder's ledger; returns (snapshot path, sha256). Offline it fails at once, saying what to copy."""
    cached = hf_hub.cached_weights(repo_id)
    try:
        if hf_hub.cached_file(repo_id, hf_hub.CONFIG_FILENAME) is None:
            hf_hub.hub_download(repo_id, hf_hub.CONFIG_FILENAME, endpoint=endpoint, timeout_s=timeout_s)
        path = cached or _download_hub_weights(repo_id, endpoint, timeout_s)
    except hf_hub.HubUnavailable as err:
        raise DownloadError(f"could not download {repo_id} from the Hugging Face Hub: {err}. Offline? "
                            f"To place the files by hand, {hf_hub.copy_instructions(backbone, repo_id)}") from None
    if cached:  # here before: checked against its record like any use (WeightHashMismatch is a ValueError)
        return path, check_weight_file(path, backbone, default_weights_dir())
    sha256 = sha256_file(path)
    published = published_sha256(path)
    if published and published[0] != sha256:
        blob = hub_blob(path)
        path.unlink(missing_ok=True)
        if blob is not None:  # else huggingface_hub would link the same bad blob again
            blob.unlink(missing_ok=True)
        raise ValueError(f"{path}: SHA-256 mismatch for {backbone}: expected {published[0]} ({published[2]}), got {sha256}; "
                         "the download was deleted, run the fetch again")
    record_weight_file(path, default_weights_dir(), f"downloaded from the Hugging Face Hub ({repo_id})", sha256)
    return path, sha256


def _download_hub_weights(repo_id: str, endpoint: str | None, timeout_s: float) -> Path:
    for filename in hf_hub.HUB_FILENAMES:
        try:
            return hf_hub.hub_download(repo_id, filename, endpoint=endpoint, timeout_s=timeout_s)
        except Exception as err:
            if not hf_hub.is_missing_on_hub(err):
                raise
            continue
    raise hf_hub.HubUnavailable(f"{repo_id} has none of {', '.join(hf_hub.HUB_FILENAMES)}: is it a timm model repository?")


def present_weights(backbone: str, weights_dir: str | Path) -> tuple[Path, Path] | None:
    """(file, ledger folder) of the weights ``fetch_weights`` would bring, when they are here already."""
    source = weight_source(backbone)
    if source is None:
        return None
    if source.hub_repo:
        found = hf_hub.cached_weights(source.hub_repo)
        config = hf_hub.cached_file(source.hub_repo, hf_hub.CONFIG_FILENAME)
        return (found, default_weights_dir()) if found and config else None
    target = Path(weights_dir).expanduser() / source.filename
    return (target, target.parent) if target.is_file() else None
