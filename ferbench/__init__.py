"""FERBench: a Ray-distributed benchmarking harness for facial-emotion-recognition backbones.

Installed as one namespace so that nothing generic lands at the top of ``sys.path``: the
repository's ``harness/``, ``backbones/`` and ``reports/`` folders are ``ferbench.harness``,
``ferbench.backbones`` and ``ferbench.reports`` (setuptools' package-dir mapping in pyproject.toml).
"""

import logging
from importlib.metadata import PackageNotFoundError, version

# A library prints nothing unless the application asks: notices are records of loggers under
# "ferbench" (the CLI shows them, see ferbench.harness.cli.output); this keeps even warnings quiet
# (Python's last-resort handler) until logging is configured.
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    __version__ = version("ferbench")
except PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    __version__ = "0+unknown"
