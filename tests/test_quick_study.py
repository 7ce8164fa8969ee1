"""The newcomer's command, for real: `python harness/run.py` runs the built-in quick study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ferbench.harness.spec import load_spec

RUN_PY = Path(__file__).resolve().parents[1] / "harness" / "run.py"


@pytest.mark.slow
def test_run_py_runs_the_quick_study_end_to_end(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "FERBENCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(RUN_PY)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

    spec = load_spec("quick")
    (experiment,) = (tmp_path / "ferbench_results").glob("quick-*")
    report = experiment / "report" / "report.md"
    assert f"Report: {report}" in done.stdout
    arms = [arm["arm_id"] for arm in spec.arms()]
    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv").set_index("arm_id")
    assert sorted(trials.index) == sorted(arms)
    pretrained = [a for a in arms if "_pretrained_" in a]
    assert len(pretrained) == 3 and (trials["status"] == "completed").all()
    assert (trials.loc[pretrained, "weights_source"] == "synth-identity").all()  # offline pretraining
    assert len(list((tmp_path / "cache" / "synth-identity").glob("*.safetensors"))) == 2
    text = report.read_text()
    for arm in arms:
        assert arm in text
    epochs = pd.read_csv(experiment / "report" / "tables" / "epochs.csv")
    runnable = len(arms)
    baseline = epochs[epochs["variant"] == "baseline"]
    assert len(baseline) == (runnable - 1) * (spec.train.epochs + 1)
    # The pseudo_label arm: the teacher's epochs, then each student round's evaluation and epochs.
    rounds = pd.read_csv(experiment / "report" / "tables" / "pseudo_label_rounds.csv")
    assert rounds["round"].tolist() == list(range(len(rounds))) and len(rounds) >= 2  # at least one student round
    assert rounds["images_added"].iloc[1] > 0
    student_rows = (len(rounds) - 1) * (spec.pseudo_label.epochs_per_round + 1)
    assert len(epochs) - len(baseline) == spec.train.epochs + 1 + student_rows
    assert "## Pseudo-labelling (Arsirii & Petrosiuk 2023)" in text
    assert f"[{runnable}/{runnable} trials" in done.stdout and f"epoch {spec.train.epochs}/{spec.train.epochs}" in done.stdout
    small_cnn = trials[trials.index.str.startswith("small_cnn")]
    assert (small_cnn["test_acc"] > 0.3).all()  # learns far above the 1/7 chance level
    assert "synth-identity" in text
