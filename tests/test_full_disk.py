"""A results disk that fills up mid-study, then ``--resume`` on a roomier disk, with code-running pickles
planted in the study folder: the study finishes, nothing on disk is taken for more than it is, and no
file of the folder is ever unpickled."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import assert_continued, resume_points

pytestmark = pytest.mark.e2e  # run.py in a subprocess, twice, on a tmpfs mount

RUN_PY = Path(__file__).resolve().parents[1] / "harness" / "run.py"
STUDY = [
    "--set", "data.num_images=240", "--set", "data.image_size=24", "--set", "train.epochs=3",
    "--set", "grid.backbone=[small_cnn]", "--set", "grid.init=[random]", "--set", "grid.seed=[0,1]",
    "--set", "run.name=full",
]


def _run_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(RUN_PY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture
def small_disk(mount_tmpfs):
    """A 3 MB filesystem: room for the study's inputs and a few checkpoints, not for the study."""
    return mount_tmpfs("small", "size=3m")


class _WritesMarker:
    """Unpickling this touches a file: proof that a pickle from the study folder was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _plant_pickles(experiment: Path, marker: Path) -> None:
    """Put a code-running pickle everywhere Ray Tune's restore (or a careless reader) would load one."""
    payload = pickle.dumps(_WritesMarker(marker))
    for name in ("tuner.pkl", "trainable.pkl", "basic-variant-state-2026-12-06_00-00-00.json"):
        (experiment / name).write_bytes(payload)
    (experiment / "experiment_state-2026-12-06_00-00-00.json").write_text(
        '{"trial_data": [["{\\"stub\\": {\\"_type\\": \\"CLOUDPICKLE_FALLBACK\\", \\"value\\": \\"%s\\"}}", "{}"]]}' % payload.hex()
    )
    for trial in experiment.glob("small_cnn_*"):
        for name in ("error.pkl", "params.pkl"):
            (trial / name).write_bytes(payload)


def test_a_full_disk_ends_in_one_line_and_resume_on_a_roomier_disk_finishes(small_disk, tmp_path):
    storage = small_disk / "results"
    first = _run_py(["quick", "--storage", str(storage), *STUDY], tmp_path)
    output = first.stdout + first.stderr
    assert first.returncode == 1, output
    assert f"ferbench: error: disk full at {storage / 'full'}" in output, output
    assert "Traceback" not in output, output
    assert f"--resume --storage {storage} --set run.name=full" in output, output

    roomy = tmp_path / "roomy"
    shutil.copytree(storage, roomy)  # what a researcher does: copy the study to a bigger disk
    continues_at = resume_points(roomy / "full")
    assert continues_at, "no intact checkpoint was written before the disk filled; enlarge the disk"
    marker = tmp_path / "pickle-was-loaded"
    _plant_pickles(roomy / "full", marker)

    second = _run_py(["quick", "--storage", str(roomy), "--resume", "--set", "run.name=full"], tmp_path)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert not marker.exists(), "a pickle from the study folder was loaded"
    counts = [(int(a), int(b)) for a, b in re.findall(r"\[(\d+)/(\d+) trials", output)]
    assert counts[-1] == (2, 2) and all(done <= total for done, total in counts), counts

    tables = roomy / "full" / "report" / "tables"
    trials = pd.read_csv(tables / "trials.csv")
    assert trials.status.tolist() == ["completed", "completed"], trials
    epochs = pd.read_csv(tables / "epochs.csv")
    assert len(epochs) == 2 * 4 and not epochs.duplicated(["arm_id", "epoch"]).any()
    assert_continued(trials, continues_at)
