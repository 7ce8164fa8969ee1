"""What clusters do to a study, done for real (marker ``e2e``): a trial's worker process killed mid-study,
the driver killed (run.py in a subprocess), a node of a multi-node Ray cluster removed. Each time nothing
is lost or duplicated, and on CPU the resumed curves equal an uninterrupted run. (Trials that fail and
are retried in-process, once or on every attempt: test_study_e2e.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from ferbench.harness.study.engine import run_study
from ferbench.harness.spec import load_spec
from ferbench.reports.collect import collect

pytestmark = pytest.mark.e2e

RUN_PY = Path(__file__).resolve().parents[1] / "harness" / "run.py"
METRICS = ["train_acc", "train_loss", "val_acc", "val_loss"]
STUDY = ["data.num_images=2000", "data.image_size=32", "train.epochs=4", "train.batch_size=32", "grid.variant=[baseline]",
         "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.exclude=[]", "grid.variant=[baseline]",
         "resources.cpu=1", "run.max_failures=2"]


def _set(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), so a test kills only processes it started."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for_epoch(storage: Path, epoch: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for result in storage.glob("*/*/result.json"):
            if f'"epoch": {epoch},' in result.read_text():
                return
        time.sleep(0.2)
    raise AssertionError(f"no trial reached epoch {epoch} within {timeout} s under {storage}")


def _start_run_py(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}  # a Ray of its own
    return subprocess.Popen([sys.executable, str(RUN_PY), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_group(process: subprocess.Popen, known: list[int] = ()) -> None:
    """Kill whatever the driver left running (its own local Ray): its descendants, those seen
    before it died (orphans are re-parented) and its process group."""
    _kill([*_children(process.pid), *known])
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tables(experiment: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables = experiment / "report" / "tables"
    return pd.read_csv(tables / "epochs.csv"), pd.read_csv(tables / "trials.csv")


def _curves(epochs: pd.DataFrame) -> pd.DataFrame:
    key = ["arm_id", "epoch"]
    return epochs.sort_values(key)[key + METRICS].reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same study, seeds 0 and 1, with nothing killed."""
    storage = tmp_path_factory.mktemp("reference")
    outcome = run_study(load_spec("quick", [*STUDY, "grid.seed=[0,1]", f"run.storage={storage}", "run.name=ref"]))
    assert set(outcome.statuses.values()) == {"completed"}
    return _tables(outcome.experiment_dir)


def test_worker_killed_mid_study_resumes_from_its_checkpoint(tmp_path, uninterrupted):
    storage = tmp_path / "results"
    driver = _start_run_py(["quick", "--storage", str(storage), *_set([*STUDY, "grid.seed=[0]", "run.name=killed"])],
                           tmp_path)
    try:
        _wait_for_epoch(storage, 1)
        workers = [p for p in _children(driver.pid) if "ImplicitFunc" in _cmdline(p)]
        assert workers, "the trial's worker process was not found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        output = driver.communicate(timeout=300)[0]
    finally:
        _stop_group(driver)
    assert driver.returncode == 0, output
    epochs, trials = _tables(storage / "killed")
    row = trials.set_index("arm_id").loc["small_cnn_random_baseline_s0"]
    assert row["status"] == "completed" and str(row["resumed_at_epochs"]) not in ("", "nan"), row
    assert not epochs.duplicated(["arm_id", "epoch"]).any() and len(epochs) == 5
    reference = uninterrupted[0][uninterrupted[0].seed == 0]
    pd.testing.assert_frame_equal(_curves(epochs), _curves(reference))


def test_driver_killed_then_resume_runs_only_unfinished_trials(tmp_path, uninterrupted):
    storage = tmp_path / "results"
    args = ["quick", "--storage", str(storage), *_set([*STUDY, "grid.seed=[0,1]", "run.max_concurrent=1",
                                                       "run.name=driverless"])]
    driver = _start_run_py(args, tmp_path)
    ray_processes: list[int] = []
    try:
        for line in driver.stdout:  # kill -9 the driver as soon as one trial has completed
            if " completed:" in line:
                ray_processes = _children(driver.pid)
                os.kill(driver.pid, signal.SIGKILL)
                break
        driver.wait(timeout=60)
    finally:
        _stop_group(driver, ray_processes)
    experiment = storage / "driverless"
    before_epochs, before = collect(experiment)  # from the trials' checkpoints: the driver had no time to flush
    finished = before.loc[before["status"] == "completed", "arm_id"].tolist()
    assert len(finished) == 1, before[["arm_id", "status"]]
    finished_curve = _curves(before_epochs[before_epochs["arm_id"] == finished[0]])

    again = _start_run_py(["quick", "--storage", str(storage), "--resume", "--set", "run.name=driverless"], tmp_path)
    try:
        output = again.communicate(timeout=300)[0]
    finally:
        _stop_group(again)
    assert again.returncode == 0, output
    assert f"{finished[0]} epoch" not in output  # the finished trial did not train again
    epochs, trials = _tables(experiment)
    assert trials["status"].tolist() == ["completed", "completed"]
    assert not epochs.duplicated(["arm_id", "epoch"]).any() and len(epochs) == 2 * 5
    pd.testing.assert_frame_equal(_curves(epochs), _curves(uninterrupted[0]))
    pd.testing.assert_frame_equal(_curves(epochs[epochs["arm_id"] == finished[0]]), finished_curve)


def test_node_removed_mid_study_trials_reschedule_on_the_remaining_node(tmp_path, uninterrupted, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    storage = tmp_path / "results"

    def remove_a_node() -> None:
        _wait_for_epoch(storage, 1)
        cluster.remove_node(doomed)

    remover = threading.Thread(target=remove_a_node, daemon=True)
    remover.start()
    try:
        spec = load_spec("quick", [*STUDY, "grid.seed=[0,1]", f"run.storage={storage}", "run.name=shrunk",
                                   "run.shared_storage=true"])
        outcome = run_study(spec)
        remover.join(timeout=60)
        alive = [node for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(alive) == 2  # the head and the one worker left
    assert set(outcome.statuses.values()) == {"completed"}
    epochs, trials = _tables(outcome.experiment_dir)
    assert trials["resumed_at_epochs"].notna().any()  # the trial on the removed node resumed elsewhere
    assert not epochs.duplicated(["arm_id", "epoch"]).any()
    pd.testing.assert_frame_equal(_curves(epochs), _curves(uninterrupted[0]))
