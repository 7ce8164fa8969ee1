"""Results on S3-compatible object storage, against a real S3-protocol server (moto's standalone
server) on 127.0.0.1: a study written to the bucket, its report rendered from the bucket, an
interrupted study resumed from it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness.storage import download, parse_remote, split_experiment_uri, upload

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
def aws_env(monkeypatch, s3_endpoint, tmp_path):
    """Credentials and endpoint as a user would export them; a fresh Ray so its workers inherit them."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": s3_endpoint, "FERBENCH_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    yield s3_endpoint
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


def test_upload_then_download_round_trip_skips_weights(aws_env, tmp_path):
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
