"""Telling a full results disk from other write failures."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

PROBE_BYTES = 1 << 20  # room for at least one more result row, error file and report table


def _caused_by_full_disk(err: BaseException | None) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full(folder: Path, err: BaseException | None = None) -> bool:
    """Whether ``err`` (or anything that caused it) is "no space left", or ``folder``'s filesystem
    has no room for a 1 MiB write now."""
    if _caused_by_full_disk(err):
        return True
    folder = Path(folder)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as probe_err:
        return probe_err.errno in (errno.ENOSPC, errno.EDQUOT)
    return False
