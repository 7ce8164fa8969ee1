"""Concise console progress: one line per finished epoch or trial, with an estimate of time left.

Replaces Ray's periodic status tables (still available with ``--verbose``). The lines are INFO records
of this module's logger marked for stdout: the CLI shows them, a Python program sees them only when it
configures logging.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from ray.tune import Callback

from ferbench.harness.study.checkpoints import TRIAL_FAILED

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressPrinter(Callback):
    """Prints ``[done/total trials | elapsed | ~left] arm epoch e/E train … val …`` lines."""

    def __init__(self, total_trials: int, epochs: int, already_finished: int = 0):
        self.total_trials = total_trials
        self.already_finished = already_finished
        self.epochs = epochs
        self.start = time.monotonic()
        self.last_epoch: dict[str, int] = {}  # trial id → newest epoch seen
        self.finished: dict[str, str] = {}  # trial id → "completed" | "failed"
        # The estimate counts from the first reported result, so start-up time does not inflate it.
        self.epochs_at_start: int | None = None
        self.first_result_at: float | None = None

    def _epochs_done(self) -> int:
        return sum(self.last_epoch.values()) + self.already_finished * self.epochs

    @property
    def trials_finished(self) -> int:
        return self.already_finished + len(self.finished)

    def _prefix(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self._epochs_done()
        remaining = self.total_trials * self.epochs - done
        progressed = done - (self.epochs_at_start or 0)
        measured = time.monotonic() - (self.first_result_at or self.start)
        left = f"~{format_duration(measured / progressed * remaining)} left" if progressed > 0 and remaining > 0 else "--:-- left"
        return f"[{self.trials_finished}/{self.total_trials} trials | {format_duration(elapsed)} elapsed | {left}]"

    def _print(self, line: str) -> None:
        log.info(line, extra={"stream": "stdout"})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if TRIAL_FAILED in result:  # stopped for good; on_trial_complete says so
            return
        epoch = int(result.get("epoch", 0))
        if self.epochs_at_start is None:
            self.epochs_at_start = self._epochs_done()
            self.first_result_at = time.monotonic()
        self.last_epoch[trial.trial_id] = epoch
        arm = trial.config["arm"]["arm_id"]
        round_no, round_epoch = int(result.get("round", 0)), int(result.get("round_epoch", epoch))
        speed = f" | {result['train_images_per_s']:.0f} img/s" if round_epoch > 0 else ""
        where = f"round {round_no} epoch {round_epoch}" if round_no else f"epoch {epoch}/{self.epochs}"  # pseudo-label students
        self._print(
            f"{self._prefix()} {arm} {where} "
            f"train acc {result['train_acc']:.3f} loss {result['train_loss']:.3f} | "
            f"val acc {result['val_acc']:.3f} loss {result['val_loss']:.3f}"
            + (f" F1 {result['val_f1_macro']:.3f}" if "val_f1_macro" in result else "")  # multi-label tasks
            + speed
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.last_epoch[trial.trial_id] = self.epochs
        result = trial.last_result or {}
        if TRIAL_FAILED in result:
            self.finished[trial.trial_id] = "failed"
            self._print(f"{self._prefix()} {trial.config['arm']['arm_id']} FAILED: {result[TRIAL_FAILED]}")
            return
        self.finished[trial.trial_id] = "completed"
        test = f": test acc {result['test_acc']:.3f}, macro F1 {result['test_macro_f1']:.3f}" if "test_acc" in result else ""
        self._print(f"{self._prefix()} {trial.config['arm']['arm_id']} completed{test}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished[trial.trial_id] = "failed"
        self.last_epoch[trial.trial_id] = self.epochs
        self._print(f"{self._prefix()} {trial.config['arm']['arm_id']} FAILED: {_last_error_line(trial)} (details: {trial.path}/error.txt)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(
            f"{self._prefix()} {trial.config['arm']['arm_id']} failed ({_last_error_line(trial)}); "
            "retrying from its last checkpoint"
        )


def _last_error_line(trial) -> str:
    """The exception line of a trial's error (Ray keeps the full traceback in error.txt)."""
    error_file = trial.error_file  # the driver's local copy; storage is synced later
    text = Path(error_file).read_text(errors="replace") if error_file and Path(error_file).is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"

