"""SIGTERM ends a study as Ctrl-C does.

Why: ``timeout``, ``kill`` and batch schedulers (Slurm, PBS) stop a job with SIGTERM. Turned into
SIGINT, it reaches Ray Tune's handler, which stops the trials after their newest checkpoint and
saves the study's state; the CLI then prints the resume command and exits with 143 (128 + SIGTERM).
"""

from __future__ import annotations

import signal
import threading

_terminated = threading.Event()


def _as_interrupt(signum, frame) -> None:
    _terminated.set()
    signal.raise_signal(signal.SIGINT)


def install_sigterm_handler() -> None:
    """Route SIGTERM to the SIGINT handler in force (Tune's during a study, else KeyboardInterrupt)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_interrupt)


def terminated() -> bool:
    """Whether a SIGTERM arrived in this process."""
    return _terminated.is_set()
