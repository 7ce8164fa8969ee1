"""cluster.yaml passes Ray's own config validation; the submitted run.py joins a running cluster and
refuses results storage that trials on other machines could not write to (marker ``e2e``: a multi-node
Ray cluster on this machine and run.py in a subprocess)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ferbench.harness.study.engine import SHARED_FILESYSTEMS, filesystem_type

REPO = Path(__file__).resolve().parents[1]
TINY_STUDY = [
    "quick", "--set", "grid.backbone=[small_cnn]", "--set", "grid.init=[random]", "--set", "train.epochs=1",
    "--set", "data.num_images=240", "--set", "data.image_size=24", "--set", "resources.cpu=1",
    "--set", "run.name=tiny",
]


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    check_legacy_fields(raw)  # available_node_types + head_node_type, no legacy head_node/worker_nodes
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before asking AWS anything
    validate_config(config)

    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs the driver only"
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["node_config"]["InstanceType"].startswith("g5.")
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["resources"]["GPU"] >= 1 and all(isinstance(v, int) for v in worker["resources"].values())
    assert "IamInstanceProfile" in worker["node_config"]
    assert raw["metadata"]["results_storage"].startswith("s3://")
    assert raw["file_mounts"] == {"~/ferbench": "."}
    assert any("pip install" in cmd and "-e ~/ferbench" in cmd for cmd in config["setup_commands"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(cmd for cmd in commands if "ray start" in cmd)
        assert start.startswith("unset OMP_NUM_THREADS;"), "Ray's SSH commands export OMP_NUM_THREADS=1"


def test_filesystem_type_reads_the_mount_table():
    assert filesystem_type(Path("/proc/self/status")) == "proc"
    assert filesystem_type(Path("/proc/no/such/file")) == "proc"  # the nearest existing parent counts
    assert "nfs4" in SHARED_FILESYSTEMS and "ext4" not in SHARED_FILESYSTEMS


@pytest.fixture
def ray_cluster(monkeypatch):
    """A multi-node Ray cluster on this machine (``ray.cluster_utils``) recorded in a private Ray temp
    folder, as ``ray start`` records its cluster: found there by a driver without ``RAY_ADDRESS``."""
    from ray.cluster_utils import Cluster

    ray_tmpdir = tempfile.mkdtemp(prefix="fbr", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmpdir)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def _submitted_run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    """run.py as `ray submit` runs it: copied alone to ~/run.py and started from the home folder."""
    shutil.copy(REPO / "harness" / "run.py", home / "run.py")
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    return subprocess.run([sys.executable, str(home / "run.py"), *args], cwd=home, env=environment,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_head_local_storage_refused_when_trials_run_elsewhere(ray_cluster, tmp_path):
    result = _submitted_run([*TINY_STUDY, "--storage", "results"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ferbench: error:")]
    assert len(errors) == 1, result.stderr
    assert f"{tmp_path / 'results'} is on this machine only" in errors[0]
    assert "a head node that runs no trials" in errors[0]  # it found the cluster without RAY_ADDRESS
    assert "--storage s3://" in errors[0] and "FERBENCH_SHARED_STORAGE=1" in errors[0]
    assert not (tmp_path / "results").exists(), "nothing is written before the refusal"


@pytest.mark.e2e
def test_storage_accepted_when_every_node_shares_this_machine(ray_cluster, tmp_path):
    ray_cluster.add_node(num_cpus=1)  # a second node, on this machine: same disk as the driver
    result = _submitted_run([*TINY_STUDY, "--storage", "results"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Done: 1 completed." in result.stdout
    assert (tmp_path / "results" / "tiny" / "report" / "report.md").is_file()
    sessions = list(Path(os.environ["RAY_TMPDIR"], "ray").glob("session_2*"))
    assert len(sessions) == 1, f"the driver started a Ray of its own instead of joining the cluster: {sessions}"
