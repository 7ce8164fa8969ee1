"""SIGTERM (as ``timeout`` and batch schedulers send; it ends a study as Ctrl-C does) during a study,
then the printed resume command: finished trials are not re-run, nothing is duplicated, and the
command continues this experiment even when a newer one of the same study sits beside it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import assert_continued, resume_points

pytestmark = pytest.mark.e2e  # run.py in a subprocess, stopped by a signal

RUN_PY = Path(__file__).resolve().parents[1] / "harness" / "run.py"
STUDY = [
    "--set", "data.num_images=240", "--set", "data.image_size=24", "--set", "train.epochs=3",
    "--set", "grid.backbone=[small_cnn]", "--set", "grid.init=[random]", "--set", "grid.seed=[0,1,2]",
    "--set", "run.max_concurrent=1", "--set", "run.name=interrupted",
]


def _run_py(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(RUN_PY), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _result_rows(trial_dir: Path) -> int:
    return sum(1 for line in (trial_dir / "result.json").read_text().splitlines() if line.strip())


def test_sigterm_then_the_printed_resume_command_finishes_without_rerunning(tmp_path):
    storage = tmp_path / "results"
    args = ["quick", "--storage", str(storage), *STUDY]
    first = _run_py(args, tmp_path)
    lines = []
    for line in first.stdout:  # stop as soon as the first trial has completed
        lines.append(line)
        if " completed" in line:
            first.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + first.communicate(timeout=180)[0]
    assert first.returncode == 143, output
    assert "Traceback" not in output and "Aborted" not in output, output
    hint = re.search(r"Continue it with: ferbench run (.+)", output).group(1)
    assert shlex.split(hint) == ["quick", "--resume", "--storage", str(storage), "--set", "run.name=interrupted"], hint

    experiment = storage / "interrupted"
    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv")
    done = trials.loc[trials.status == "completed", "arm_id"].tolist()
    assert len(done) >= 1 and "incomplete" in trials.status.tolist(), trials
    done_dirs = {arm: next(experiment.glob(f"{arm}_*")) for arm in done}
    rows_before = {arm: _result_rows(d) for arm, d in done_dirs.items()}
    continues_at = resume_points(experiment, skip=tuple(done))  # not from scratch
    # A newer experiment of the same study: "--resume" alone would take it; the printed command must not.
    decoy = storage / "quick-20991231-235959"
    shutil.copytree(experiment / "ferbench", decoy / "ferbench")

    second = _run_py(shlex.split(hint), tmp_path)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    for arm in done:  # no epoch of a finished trial ran again
        assert f"{arm} epoch" not in output
        assert _result_rows(done_dirs[arm]) == rows_before[arm]
    counts = [(int(a), int(b)) for a, b in re.findall(r"\[(\d+)/(\d+) trials", output)]
    assert counts and all(done <= total == 3 for done, total in counts), counts
    assert counts[-1] == (3, 3)
    assert sorted(p.name for p in decoy.iterdir()) == ["ferbench"]  # untouched

    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv")
    assert trials.status.tolist() == ["completed"] * 3
    assert_continued(trials, continues_at)
    epochs = pd.read_csv(experiment / "report" / "tables" / "epochs.csv")
    assert len(epochs) == 3 * 4  # exactly one row per trial × epoch (0..3)
    assert not epochs.duplicated(["arm_id", "epoch"]).any()
    manifest = json.loads((experiment / "ferbench" / "manifest.json").read_text())
    assert manifest["spec"]["train"]["epochs"] == 3
