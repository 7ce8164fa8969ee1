"""Results on S3-compatible object storage, against a real S3-protocol server (moto's standalone
server) on 127.0.0.1: files uploaded and downloaded; a study written to the bucket, its report rendered
from the bucket, an interrupted study resumed from it (those two marked ``e2e``: their Ray workers need
the credentials, so they stop the session's Ray and start their own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from ferbench.harness.study.storage import download, latest_remote_experiment, parse_remote, split_experiment_uri, upload

BUCKET = "ferbench-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with a bucket; stopped after the module."""
    import pyarrow.fs as pafs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start (pip install 'moto[server]')")
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", access_key="test",
                          secret_key="test", allow_bucket_creation=True).create_dir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def aws_credentials(monkeypatch, s3_endpoint, tmp_path):
    """Credentials and endpoint as a user would export them."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": s3_endpoint, "FERBENCH_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


@pytest.fixture
def aws_env(aws_credentials):
    """The credentials, and a fresh Ray so that its workers inherit them (the session's Ray is stopped for
    it: these tests are marked ``e2e``)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield aws_credentials
    ray.shutdown()  # its workers hold this test's credentials


def test_storage_uris_parse_and_refuse_other_schemes():
    storage = parse_remote("s3://bucket/some/prefix/", endpoint="http://127.0.0.1:9000")
    assert (storage.bucket, storage.prefix, storage.uri) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert storage.key("exp", "ferbench/grid.json") == "bucket/some/prefix/exp/ferbench/grid.json"
    assert split_experiment_uri("s3://bucket/p/quick-1")[1] == "quick-1"
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        parse_remote("gs://bucket/prefix")
    with pytest.raises(ValueError, match="name an experiment folder"):
        split_experiment_uri("s3://bucket")


def test_upload_then_download_round_trip_skips_weights(aws_credentials, tmp_path):
    storage = parse_remote(f"s3://{BUCKET}/roundtrip")
    local = tmp_path / "exp"
    (local / "ferbench").mkdir(parents=True)
    (local / "ferbench" / "grid.json").write_text("[1, 2]")
    (local / "trial" / "checkpoint_000001").mkdir(parents=True)
    (local / "trial" / "checkpoint_000001" / "history.json").write_text("[]")
    (local / "trial" / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"weights")
    upload(storage, local, "exp", "ferbench/grid.json")
    upload(storage, local, "exp", "trial")
    mirror = download(storage, "exp", tmp_path / "mirror")
    assert (mirror / "ferbench" / "grid.json").read_text() == "[1, 2]"
    assert (mirror / "trial" / "checkpoint_000001" / "history.json").read_text() == "[]"
    assert not (mirror / "trial" / "checkpoint_000001" / "checkpoint.pt").exists()
    with pytest.raises(FileNotFoundError, match="no such experiment"):
        download(storage, "missing", tmp_path / "nothing")


STUDY = ["data.num_images=240", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "grid.variant=[baseline]",
         "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.seed=[0,1]", "grid.exclude=[]", "resources.cpu=1",
         "run.max_concurrent=1"]


def _keys(prefix: str) -> set[str]:
    import pyarrow.fs as pafs

    fs = parse_remote(f"s3://{BUCKET}").filesystem()
    return {info.path[len(BUCKET) + 1:] for info in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))}


@pytest.mark.e2e
def test_study_on_s3_writes_trials_and_report_to_the_bucket_and_renders_from_it(aws_env, tmp_path, capsys):
    from ferbench.harness.cli.main import main

    storage = f"s3://{BUCKET}/studies"
    assert main(["run", "--storage", storage, *(x for o in [*STUDY, "run.name=on-s3"] for x in ("--set", o))]) == 0
    out = capsys.readouterr().out
    assert f"→ {storage}/on-s3 (mirrored in" in out
    keys = _keys("studies/on-s3")
    for key in ("ferbench/manifest.json", "ferbench/splits.npz", "ferbench/grid.json", "report/report.md",
                "report/report.html", "report/tables/epochs.csv"):
        assert f"studies/on-s3/{key}" in keys, key
    parts = [key.split("/", 3) for key in keys]
    trial_files = {p[3] for p in parts if len(p) == 4 and p[2].startswith("small_cnn_random_baseline_s")}
    assert {"result.json", "test_predictions.npz", "test_per_class.json"} <= trial_files
    assert any(name.startswith("checkpoint_") and name.endswith("/checkpoint.pt") for name in trial_files)

    # The report renders from the bucket alone: a fresh mirror, written back beside the trials.
    import shutil

    shutil.rmtree(parse_remote(storage).mirror("on-s3"))
    assert main(["report", f"{storage}/on-s3"]) == 0
    out = capsys.readouterr().out
    assert f"uploaded to {storage}/on-s3/report/" in out
    epochs = pd.read_csv(parse_remote(storage).mirror("on-s3") / "report" / "tables" / "epochs.csv")
    assert sorted(epochs.groupby("arm_id")["epoch"].apply(list).tolist()) == [[0, 1, 2], [0, 1, 2]]
    trials = pd.read_csv(parse_remote(storage).mirror("on-s3") / "report" / "tables" / "trials.csv")
    assert trials["status"].tolist() == ["completed", "completed"]

    assert main(["run", "--storage", storage, "--set", "run.name=on-s3", *(x for o in STUDY for x in ("--set", o))]) == 2
    assert "already holds an experiment" in capsys.readouterr().err


@pytest.mark.e2e
def test_interrupted_study_on_s3_resumes_from_the_bucket(aws_env, tmp_path, capsys):
    """Stopped after its first trial (as a Ctrl-C would), the study continues with --resume from
    the bucket, the local mirror deleted in between."""
    import shutil

    from ferbench.harness.cli.main import main
    from ferbench.harness.study.progress import ProgressPrinter

    storage = f"s3://{BUCKET}/resumed"
    original = ProgressPrinter.on_trial_complete

    def stop_after_first(self, *args, **kwargs):  # Ctrl-C, as Tune receives it
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    ProgressPrinter.on_trial_complete = stop_after_first
    try:
        code = main(["run", "--storage", storage, *(x for o in STUDY for x in ("--set", o))])
    finally:
        ProgressPrinter.on_trial_complete = original
    assert code == 130, capsys.readouterr()
    capsys.readouterr()
    name = latest_remote_experiment(parse_remote(storage), "quick")
    assert name and name.startswith("quick-")
    mirror = parse_remote(storage).mirror(name)
    assert "incomplete" in pd.read_csv(mirror / "report" / "tables" / "trials.csv")["status"].tolist()
    shutil.rmtree(mirror)
    assert main(["run", "--storage", storage, "--resume"]) == 0  # the newest experiment of the study
    assert f"Resuming 'quick': 2 arms (1 finished before), 2 epochs each → {storage}/{name}" in capsys.readouterr().out
    trials = pd.read_csv(mirror / "report" / "tables" / "trials.csv")
    assert trials["status"].tolist() == ["completed", "completed"]
    epochs = pd.read_csv(mirror / "report" / "tables" / "epochs.csv")
    assert len(epochs) == 2 * 3 and not epochs.duplicated(["arm_id", "epoch"]).any()


def test_unknown_scheme_and_unreachable_bucket_fail_in_one_line_before_anything_is_written(tmp_path, capsys,
                                                                                           monkeypatch):
    from ferbench.harness.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--storage", "gs://bucket/prefix"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferbench: error: run.storage:") and "s3://BUCKET/PREFIX" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    closed = f"http://127.0.0.1:{_free_port()}"  # nobody listens there
    assert main(["run", "--storage", "s3://bucket/prefix", "--set", f"run.s3_endpoint={closed}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferbench: error: run.storage: cannot reach s3://bucket/prefix") and "run.s3_endpoint" in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())
