"""FERBench: a Ray-distributed benchmarking harness for facial-emotion-recognition backbones.

Installed as one namespace so that nothing generic lands at the top of ``sys.path``: the
repository's ``harness/``, ``backbones/`` and ``reports/`` folders are ``ferbench.harness``,
``ferbench.backbones`` and ``ferbench.reports`` (setuptools' package-dir mapping in pyproject.toml).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ferbench")
except PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    __version__ = "0+unknown"
