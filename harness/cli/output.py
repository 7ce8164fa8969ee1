"""How the command line shows the library's notices: one handler on the ``ferbench`` logger.

The convention, for every library module (everything but ``harness/cli/`` and the progress
reporter ``harness/study/progress.py``):

- never ``print``; log through the module's own logger, ``log = logging.getLogger(__name__)``
  (module names start with ``ferbench.``, so every logger is under the ``ferbench`` logger);
- ``log.info`` for progress and notices ("data: cached …", "  weights: downloading …"),
  ``log.warning`` for what the user should look at ("data: warning: …", a cache that could not be
  written), ``log.debug`` for detail shown only with ``--verbose``; the message is the whole line,
  exactly as it should appear (no level or module prefix is added);
- a notice is written to **stderr** unless it is logged with ``extra={"stream": "stdout"}``: that
  marks the few lines that belong to a command's own narrative on stdout, such as the study plan
  ``ferbench run`` announces and synth-identity pretraining progress. Diagnostics go to stderr by
  default so that a notice can never slip into output other programs read (``--json``, ``--print-spec``).

Library use (``import ferbench`` and call functions) prints nothing: the ``ferbench`` logger has a
``NullHandler`` (``ferbench/__init__.py``), so even warnings stay quiet until the application
configures logging; notices are then ordinary log records (level INFO or WARNING, logger
``ferbench.<module>``). The CLI's ``main`` calls ``configure_output`` before a command and
``restore_output`` after it, so the terminal shows the same text on the same streams as when the
library printed.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "ferbench"
STDOUT = "stdout"  # the value of a record's ``stream`` (``extra={"stream": "stdout"}``) that goes to stdout

_saved: list[tuple[int, bool]] = []  # the logger's level and propagation before configure_output


class ConsoleHandler(logging.Handler):
    """Each record's message as one plain line, on stdout when the record says ``stream="stdout"``,
    else on stderr. The streams are looked up per record (``sys.stdout`` / ``sys.stderr`` as they are
    then), so redirections made after configuration (pytest's capture, ``contextlib.redirect_*``) apply."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if getattr(record, "stream", None) == STDOUT else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:  # as logging.StreamHandler does
            raise
        except Exception:
            self.handleError(record)


def configure_output(verbose: bool = False) -> logging.Handler:
    """Show FERBench's notices on the terminal: INFO and above (DEBUG too with ``verbose``), as plain
    lines. Replaces a handler an earlier call installed, so calling it twice prints nothing twice.
    The records do not propagate to the root logger meanwhile (an application's own root handler
    would print each line a second time); ``restore_output`` undoes all of it."""
    logger = logging.getLogger(LOGGER)
    if not _remove_console_handlers(logger):
        _saved.append((logger.level, logger.propagate))
    handler = ConsoleHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return handler


def restore_output() -> None:
    """Undo ``configure_output``: the ``ferbench`` logger is quiet again (library use)."""
    logger = logging.getLogger(LOGGER)
    _remove_console_handlers(logger)
    if _saved:
        level, propagate = _saved.pop()
        logger.setLevel(level)
        logger.propagate = propagate


def _remove_console_handlers(logger: logging.Logger) -> bool:
    handlers = [h for h in logger.handlers if isinstance(h, ConsoleHandler)]
    for handler in handlers:
        logger.removeHandler(handler)
    return bool(handlers)
