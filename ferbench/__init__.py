"""FERBench: a Ray-distributed benchmarking harness for facial-emotion-recognition backbones.

Installed as one namespace so that nothing generic lands at the top of ``sys.path``: the
repository's ``harness/``, ``backbones/`` and ``reports/`` folders are ``ferbench.harness``,
``ferbench.backbones`` and ``ferbench.reports`` (setuptools' package-dir mapping in pyproject.toml).

The Python API is here: ``ferbench.run``, ``ferbench.load``, ``ferbench.Experiment`` (``ferbench.api``)
and ``ferbench.__version__``. They are looked up on first use (a module ``__getattr__``), so that
``import ferbench`` imports neither torch, Ray nor pandas.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferbench.api import Experiment, load, run

__all__ = ["Experiment", "__version__", "load", "run"]
__version__: str

# A library prints nothing unless the application asks: notices are records of loggers under
# "ferbench" (the CLI shows them, see ferbench.harness.cli.output); this keeps even warnings quiet
# (Python's last-resort handler) until logging is configured.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_API = frozenset({"Experiment", "load", "run"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferbench")
    except PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for and then kept as ordinary attributes."""
    if name == "__version__":
        value: Any = _version()
    elif name in _API:
        from ferbench import api

        value = getattr(api, name)
    else:
        raise AttributeError(f"module 'ferbench' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
