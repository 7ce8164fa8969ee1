"""Where FERBench keeps what it can rebuild or download again, decided in one place.

``$FERBENCH_CACHE_DIR`` (datasets, synth-identity weights, S3 mirrors) and ``$FERBENCH_WEIGHTS_DIR``
(published weights) win; otherwise both live under the XDG cache folder, ``$XDG_CACHE_HOME/ferbench``
(``~/.cache/ferbench`` when it is unset), as on any Linux desktop or cluster with a scratch cache.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ferbench``, else ``~/.cache/ferbench``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ferbench"


def cache_dir(*parts: str) -> Path:
    """A folder of FERBench's cache: ``$FERBENCH_CACHE_DIR/<parts>``, else under ``user_cache_dir()``."""
    return Path(os.environ.get("FERBENCH_CACHE_DIR") or user_cache_dir()).expanduser().joinpath(*parts)


def weights_dir() -> Path:
    """Published weights: ``$FERBENCH_WEIGHTS_DIR``, else ``user_cache_dir()/weights``."""
    return Path(os.environ.get("FERBENCH_WEIGHTS_DIR") or user_cache_dir() / "weights").expanduser()
