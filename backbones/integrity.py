"""SHA-256 of weight files: recorded when a file is downloaded (or first used), verified at every later use.

Why: a weight file that changes after its download (a truncated copy, a disk fault, a file swapped by
hand) would otherwise train a whole study on other weights without a word; the run manifest records
each run's hash, but only a record kept beside the weights says that today's file is the one fetched
then. One ``sha256.json`` per weights folder holds the files in that folder under their relative names,
so the ledger travels with a copied folder; files found elsewhere (the Hugging Face cache, deepface's
folder) are kept in the default weights folder's ledger under their absolute paths. Where the
publisher's hash is known it is checked as well: ``PINNED_SHA256``, and the Hugging Face Hub's LFS
hash, which is the name of the file's blob in the hub cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LEDGER_NAME = "sha256.json"
CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")

# File name in the weights folder → SHA-256 hex digest, checked at download and at every use; add an
# entry only for a hash checked against the publisher's file, never a guessed one.
PINNED_SHA256: dict[str, str] = {}

log = logging.getLogger(__name__)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WeightHashMismatch(ValueError):
    """A weight file whose SHA-256 is not the recorded or published one; the message names the file,
    both hashes, where the expected one comes from, and the fix."""

    def __init__(self, path: Path, expected: str, actual: str, kind: str, origin: str, fix: str):
        self.path, self.expected, self.actual, self.kind, self.fix = path, expected, actual, kind, fix
        super().__init__(f"{path}: SHA-256 mismatch: expected {expected} ({origin}), actual {actual}; {fix}")


@dataclass(frozen=True)
class Ledger:
    """The ``sha256.json`` of one folder: file key → {sha256, size, recorded, how}."""

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / LEDGER_NAME

    def key(self, file: Path) -> str:
        """``file`` relative to the folder when inside it (the ledger moves with the folder), else absolute."""
        absolute = Path(os.path.abspath(file))
        try:
            return absolute.relative_to(os.path.abspath(self.folder)).as_posix()
        except ValueError:
            return str(absolute)

    def read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path}: not a readable SHA-256 ledger ({type(err).__name__}); delete it, and the "
                             "hashes of the weight files are recorded again at their next use") from None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise ValueError(f"{self.path}: not a FERBench SHA-256 ledger (no 'files' mapping); delete it, and the "
                             "hashes are recorded again at the next use")
        return files

    def get(self, file: Path) -> dict | None:
        entry = self.read().get(self.key(file))
        return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None

    def record(self, file: Path, sha256: str, how: str) -> None:
        """Add or replace ``file``'s entry (temp file + rename). A folder that cannot be written (a
        read-only share) only loses the record: a warning, not a failure."""
        try:
            files = self.read()
        except ValueError:
            files = {}  # an unreadable ledger is replaced
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        files[self.key(file)] = {"sha256": sha256, "size": Path(file).stat().st_size, "recorded": stamp, "how": how}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{LEDGER_NAME}.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": 1, "files": dict(sorted(files.items()))}, handle, indent=1)
                handle.write("\n")
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("could not record the SHA-256 of %s in %s (%s); it is not verified at later uses",
                        file, self.path, err)


def hub_blob(path: Path) -> Path | None:
    """The blob a Hugging Face cache snapshot file links to, when it is one."""
    resolved = Path(path).resolve()
    return resolved if resolved.parent.name == "blobs" and resolved != Path(os.path.abspath(path)) else None


def published_sha256(path: Path) -> tuple[str, str, str] | None:
    """(hash, kind, origin) the publisher gives for ``path``: pinned here, or the Hub's LFS hash
    (huggingface_hub names an LFS file's blob after its SHA-256; small git files' blobs after their
    git SHA-1, which says nothing here)."""
    pinned = PINNED_SHA256.get(Path(path).name)
    if pinned:
        return pinned.lower(), "pinned", "pinned in ferbench.backbones.integrity.PINNED_SHA256"
    blob = hub_blob(path)
    if blob is not None and _SHA256.fullmatch(blob.name):
        return blob.name, "Hub's", "the Hugging Face Hub's LFS hash, the name of its blob in the hub cache"
    return None


def _fix(path: Path, backbone: str, can_accept: bool) -> str:
    blob = hub_blob(path)
    if blob is not None:  # huggingface_hub re-links a blob that is still there instead of downloading it
        delete = f"delete {blob} and {Path(os.path.abspath(path))}"
    else:
        delete = "delete it"
    fix = f"{delete}, then run `ferbench weights fetch {backbone}` to download it again"
    if can_accept:
        fix += f", or, if you replaced it on purpose, run `ferbench weights verify --accept {backbone}` to record its new hash"
    return fix


def check_weight_file(path: str | Path, backbone: str, ledger_dir: str | Path, *, accept: bool = False) -> str:
    """``path``'s SHA-256, after checking it against the publisher's hash and ``ledger_dir``'s ledger;
    a file not in the ledger yet is recorded (trust on first use). ``accept`` records a changed hash
    instead of refusing it (never against a publisher's hash). Raises ``WeightHashMismatch``."""
    path = Path(path)
    actual = sha256_file(path)
    published = published_sha256(path)
    if published and actual != published[0]:
        expected, kind, origin = published
        raise WeightHashMismatch(path, expected, actual, kind, origin, _fix(path, backbone, can_accept=False))
    ledger = Ledger(Path(ledger_dir))
    entry = ledger.get(path)
    if entry is not None and entry["sha256"] == actual:
        return actual
    if entry is not None and not accept:
        origin = f"recorded in {ledger.path} when it was {entry.get('how', 'first used')}, {entry.get('recorded', '?')}"
        raise WeightHashMismatch(path, entry["sha256"], actual, "recorded", origin, _fix(path, backbone, can_accept=True))
    how = "accepted by ferbench weights verify --accept" if entry is not None else (
        "first used, matching the publisher's hash" if published else "first used")
    ledger.record(path, actual, how)
    return actual


def record_weight_file(path: str | Path, ledger_dir: str | Path, how: str, sha256: str | None = None) -> str:
    """Record ``path`` (just downloaded or written by FERBench) in ``ledger_dir``'s ledger; returns its hash."""
    sha256 = sha256 or sha256_file(path)
    Ledger(Path(ledger_dir)).record(Path(path), sha256, how)
    return sha256
