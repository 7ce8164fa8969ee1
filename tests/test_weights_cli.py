"""Downloading weights (against a real HTTP server on 127.0.0.1) and ``ferbench weights list|fetch|verify|import-h5``.

No test reaches the internet: downloads go to a ``http.server`` run in a thread, to a closed port,
or to a socket that never answers; the CLI's ``--mirror`` points ``fetch`` at them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet
from helpers import openface_h5, random_openface  # the Keras-layout .h5 writer

from ferbench.backbones import download, resolve_pretrained
from ferbench.backbones.download import DownloadError, fetch, weight_source
from ferbench.backbones.h5_import import H5_BACKBONES
from ferbench.backbones.integrity import LEDGER_NAME
from ferbench.harness.cli.weights_cmd import H5_CHOICES, add_weights_parser, cmd_weights

GITHUB = "https://github.com/serengil/deepface_models/releases/download/v1.0"
HF_DEEPFACE = "https://huggingface.co/serengil/deepface/resolve/main"


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/short`` promises 1,000 bytes, sends 10 and hangs up (a dropped connection)."""

    def do_GET(self) -> None:
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL) of a real HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def weights_dir(isolated_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    return isolated_weights[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def ferbench_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferbench")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_weights(parser.parse_args(["weights", *argv]))


def one_error_line(err: str) -> str:
    assert err.startswith("ferbench: error: ") and err.strip().count("\n") == 0, err
    return err


# --- fetch ---------------------------------------------------------------------------------------

def test_fetch_streams_verifies_and_renames(server, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="ferbench")
    folder, base = server
    payload = os.urandom(3_000_000)
    (folder / "w.pth").write_bytes(payload)
    monkeypatch.setattr(download, "PROGRESS_MIN_BYTES", 1)
    monkeypatch.setattr(download, "CHUNK_BYTES", 64 * 1024)
    target = tmp_path / "weights" / "w.pth"
    expected = hashlib.sha256(payload).hexdigest()
    assert fetch(f"{base}/w.pth", target, expected_sha256=expected.upper()) == expected
    assert target.read_bytes() == payload and leftovers(target.parent) == []
    progress = [record.getMessage() for record in caplog.records if record.name.startswith("ferbench")]
    assert progress[0] == f"  w.pth: downloading 3 MB from {base}/w.pth"
    assert 9 <= len(progress) - 1 <= 11 and progress[-1].startswith("  w.pth: 100%")


def test_sha256_mismatch_deletes_the_download(server, tmp_path):
    folder, base = server
    (folder / "w.pth").write_bytes(b"other bytes")
    target = tmp_path / "w.pth"
    got = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(ValueError, match=rf"{base}/w.pth: SHA-256 mismatch for w.pth: expected {'ab' * 32}, got {got}"):
        fetch(f"{base}/w.pth", target, expected_sha256="ab" * 32)
    assert not target.exists() and leftovers(tmp_path) == []


def test_404_and_dropped_connection_fall_back_to_the_next_mirror(server, tmp_path):
    folder, base = server
    (folder / "w.pth").write_bytes(b"weights")
    target = tmp_path / "w.pth"
    assert fetch([f"{base}/missing.pth", f"{base}/short", f"{base}/w.pth"], target) == hashlib.sha256(b"weights").hexdigest()
    assert target.read_bytes() == b"weights" and leftovers(tmp_path) == []
    with pytest.raises(DownloadError, match=r"missing.pth \(HTTP 404 .*short \(.*\)\. Offline\?"):
        fetch([f"{base}/missing.pth", f"{base}/short"], tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists() and leftovers(tmp_path) == []


def test_unreachable_url_fails_fast_saying_where_to_place_the_file(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/openface_weights.pth"
    target = tmp_path / "weights" / "openface_weights.pth"
    start = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        fetch(url, target, timeout_s=5)
    assert time.monotonic() - start < 5  # refused at once, not after the timeout
    message = str(caught.value)
    assert url in message and f"place it at {target}" in message and "\n" not in message
    assert not target.exists() and leftovers(target.parent) == []


def test_a_server_that_never_answers_is_bounded_by_the_timeout(tmp_path):
    with socket.socket() as silent:  # the kernel accepts the connection; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/w.pth"
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"w.pth \(timed out\)"):
            fetch(url, tmp_path / "w.pth", timeout_s=0.5)
        assert 0.4 < time.monotonic() - start < 3


def test_weight_sources_are_the_published_files_under_the_resolvers_names():
    vgg = weight_source("vggface")
    assert vgg.filename == "vgg_face_weights.pth"
    assert vgg.urls == (f"{GITHUB}/vgg_face_weights.pth", f"{HF_DEEPFACE}/vgg_face_weights.pth")
    resnet = weight_source("resnet50")
    assert resnet.filename == "resnet50.safetensors"
    assert resnet.urls == ("https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors",)
    assert weight_source("timm:resnet18").filename == "timm-resnet18.safetensors"
    assert weight_source("small_cnn") is None
    assert download.PINNED_SHA256 == {}  # only hashes checked against the publisher's files belong here


# --- ferbench weights ----------------------------------------------------------------------------

def test_weights_is_a_ferbench_command(weights_dir, capsys):
    from ferbench.harness.cli.main import main

    assert main(["weights", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} == {"mobilenet_v1", "openface", "resnet50", "vggface"}
    assert not any(row["available"] for row in rows)


def test_list_shows_found_and_missing_weights_with_their_sources(weights_dir, capsys):
    torch.save(OpenFaceNet().state_dict(), weights_dir / "openface_weights.pth")
    assert ferbench_weights("list", "--json") == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"mobilenet_v1", "openface", "resnet50", "vggface"} <= set(rows) and "small_cnn" not in rows
    openface, vgg = rows["openface"], rows["vggface"]
    assert openface["available"] and openface["path"] == str((weights_dir / "openface_weights.pth").resolve())
    assert openface["size_bytes"] == (weights_dir / "openface_weights.pth").stat().st_size
    assert not vgg["available"] and vgg["file"] == str(weights_dir / "vgg_face_weights.pth")
    assert vgg["url"] == f"{GITHUB}/vgg_face_weights.pth" and vgg["mirrors"] == [f"{HF_DEEPFACE}/vgg_face_weights.pth"]
    assert rows["resnet50"]["file"] == str(weights_dir / "resnet50.safetensors")
    assert ferbench_weights("list") == 0
    text = capsys.readouterr().out
    assert "openface      found" in text and f"{weights_dir / 'vgg_face_weights.pth'}  <- {GITHUB}" in text


def test_fetch_from_a_mirror_then_verify(server, weights_dir, capsys):
    folder, base = server
    torch.save(random_openface().state_dict(), folder / "openface_weights.pth")
    assert ferbench_weights("fetch", "openface", "--mirror", base) == 0
    out = capsys.readouterr().out
    fetched = weights_dir / "openface_weights.pth"
    assert f"openface: {fetched}  sha256={hashlib.sha256(fetched.read_bytes()).hexdigest()}" in out
    assert resolve_pretrained("openface").path == str(fetched.resolve())
    assert ferbench_weights("fetch", "openface", "--mirror", f"http://127.0.0.1:{closed_port()}") == 0
    assert "already present" in capsys.readouterr().out  # nothing is downloaded twice
    assert ferbench_weights("verify") == 0
    assert f"openface      OK      {fetched.resolve()}  sha256=" in capsys.readouterr().out


def test_fetch_offline_is_one_line_and_exit_code_2(weights_dir, capsys):
    start = time.monotonic()
    assert ferbench_weights("fetch", "openface", "--mirror", f"http://127.0.0.1:{closed_port()}", "--timeout", "5") == 2
    assert time.monotonic() - start < 5  # refused at once, not after the timeout
    err = one_error_line(capsys.readouterr().err)
    assert f"place it at {weights_dir / 'openface_weights.pth'}" in err
    assert not (weights_dir / "openface_weights.pth").exists() and leftovers(weights_dir) == []


@pytest.mark.parametrize(
    "name, message", [("nope", "unknown backbone 'nope'"), ("small_cnn", "small_cnn has no published pretrained weights")]
)
def test_fetch_refuses_unknown_names_before_any_download(weights_dir, capsys, name, message):
    assert ferbench_weights("fetch", "openface", name) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (weights_dir / "openface_weights.pth").exists()


def test_fetch_checks_a_pinned_hash(server, weights_dir, monkeypatch, capsys):
    folder, base = server
    (folder / "openface_weights.pth").write_bytes(b"tampered")
    monkeypatch.setitem(download.PINNED_SHA256, "openface_weights.pth", "0" * 64)
    assert ferbench_weights("fetch", "openface", "--mirror", base) == 2
    assert f"SHA-256 mismatch for openface_weights.pth: expected {'0' * 64}" in one_error_line(capsys.readouterr().err)
    assert not (weights_dir / "openface_weights.pth").exists()


def test_verify_loads_each_file_and_reports_failures(weights_dir, monkeypatch, capsys):
    assert ferbench_weights("verify") == 0
    assert "No pretrained weight files found" in capsys.readouterr().out
    torch.save(OpenFaceNet().state_dict(), weights_dir / "openface_weights.pth")
    (weights_dir / "vgg_face_weights.pth").write_bytes(b"an interrupted download")
    assert ferbench_weights("verify") == 1
    out = capsys.readouterr().out
    assert "openface      OK" in out
    assert f"vggface       FAILED  {(weights_dir / 'vgg_face_weights.pth').resolve()}  sha256=" in out
    assert "not a readable weights file" in out
    assert ferbench_weights("verify", "openface") == 0
    capsys.readouterr()
    assert ferbench_weights("verify", "resnet50") == 1  # asked for by name, absent
    assert "resnet50      MISSING" in capsys.readouterr().out
    monkeypatch.setitem(download.PINNED_SHA256, "openface_weights.pth", "0" * 64)
    assert ferbench_weights("verify", "openface") == 1
    assert f"differs from the pinned sha256 {'0' * 64}" in capsys.readouterr().out


def test_import_h5_writes_a_loadable_state_dict(weights_dir, tmp_path, capsys):
    reference = random_openface()
    h5 = openface_h5(tmp_path / "openface_weights.h5", reference)
    assert ferbench_weights("import-h5", str(h5), "--backbone", "openface") == 0
    out_file = weights_dir / "openface_weights.pth"
    assert f"openface: wrote {out_file.resolve()} (" in capsys.readouterr().out
    state = torch.load(out_file, weights_only=True)
    assert state.keys() == reference.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    assert resolve_pretrained("openface").path == str(out_file.resolve()) and leftovers(weights_dir) == []
    entry = ledger_entry(weights_dir, "openface_weights.pth")  # written on purpose: recorded, replacing any earlier
    assert entry["how"] == "written by ferbench weights import-h5 (openface)"
    assert entry["sha256"] == hashlib.sha256(out_file.read_bytes()).hexdigest()

    elsewhere = tmp_path / "converted" / "of.pth"
    assert ferbench_weights("import-h5", str(h5), "--backbone", "openface", "--out", str(elsewhere)) == 0
    assert elsewhere.is_file() and f"--set weights.files.openface={elsewhere.resolve()}" in capsys.readouterr().out


def test_import_h5_bad_input_is_one_line_and_writes_nothing(weights_dir, tmp_path, capsys):
    assert ferbench_weights("import-h5", str(tmp_path / "absent.h5"), "--backbone", "openface") == 2
    assert "absent.h5: no such file" in one_error_line(capsys.readouterr().err)
    h5 = openface_h5(tmp_path / "openface_weights.h5", random_openface())
    assert ferbench_weights("import-h5", str(h5), "--backbone", "vggface") == 2  # an OpenFace file
    assert "openface_weights.h5: " in one_error_line(capsys.readouterr().err)
    h5.write_bytes(h5.read_bytes()[:4096])
    assert ferbench_weights("import-h5", str(h5), "--backbone", "openface") == 2
    assert "not a readable Keras HDF5 file" in one_error_line(capsys.readouterr().err)
    assert list(weights_dir.iterdir()) == []
    with pytest.raises(SystemExit) as usage:
        ferbench_weights("import-h5", str(h5), "--backbone", "resnet50")
    assert usage.value.code == 2
    assert H5_CHOICES == H5_BACKBONES


# --- the SHA-256 ledger ---------------------------------------------------------------------------

def ledger_entry(folder: Path, key: str) -> dict:
    return json.loads((folder / LEDGER_NAME).read_text())["files"][key]


def test_a_file_changed_after_its_download_is_refused_until_fetched_again_or_accepted(server, weights_dir, capsys):
    folder, base = server
    torch.save(random_openface().state_dict(), folder / "openface_weights.pth")
    assert ferbench_weights("fetch", "openface", "--mirror", base) == 0
    capsys.readouterr()
    path = weights_dir / "openface_weights.pth"
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = ledger_entry(weights_dir, "openface_weights.pth")  # relative: the ledger travels with the folder
    assert entry["sha256"] == recorded and entry["how"] == "downloaded" and entry["size"] == path.stat().st_size
    assert resolve_pretrained("openface").available

    torch.manual_seed(5)
    torch.save(OpenFaceNet().state_dict(), path)  # other weights of the same network: it would load silently
    changed = hashlib.sha256(path.read_bytes()).hexdigest()
    status = resolve_pretrained("openface")
    assert not status.available and status.source == "sha256-mismatch" and "\n" not in status.message
    assert status.message == (
        f"openface: {path.resolve()}: SHA-256 mismatch: expected {recorded} (recorded in {weights_dir / LEDGER_NAME} "
        f"when it was downloaded, {entry['recorded']}), actual {changed}; delete it, then run `ferbench weights fetch "
        "openface` to download it again, or, if you replaced it on purpose, run `ferbench weights verify --accept "
        "openface` to record its new hash")
    assert ferbench_weights("fetch", "openface", "--mirror", base) == 2  # present, changed: not used, not overwritten
    assert f"SHA-256 mismatch: expected {recorded}" in one_error_line(capsys.readouterr().err)
    assert ferbench_weights("verify", "openface") == 1
    assert f"differs from the recorded sha256 {recorded}" in capsys.readouterr().out

    assert ferbench_weights("verify", "--accept", "openface") == 0
    assert f"openface      OK      {path.resolve()}  sha256={changed}" in capsys.readouterr().out
    assert ledger_entry(weights_dir, "openface_weights.pth")["how"] == "accepted by ferbench weights verify --accept"
    assert resolve_pretrained("openface").available


def test_the_ledger_travels_with_a_copied_weights_folder(weights_dir, tmp_path):
    torch.save(random_openface().state_dict(), weights_dir / "openface_weights.pth")
    assert resolve_pretrained("openface").available  # first use: recorded
    copy = tmp_path / "cluster_weights"
    shutil.copytree(weights_dir, copy)
    assert resolve_pretrained("openface", weights_dir=copy).path == str((copy / "openface_weights.pth").resolve())
    (copy / "openface_weights.pth").write_bytes(b"truncated")
    status = resolve_pretrained("openface", weights_dir=copy)
    assert status.source == "sha256-mismatch" and f"recorded in {copy / LEDGER_NAME}" in status.message


def test_an_explicit_weights_file_is_the_users_own_and_not_recorded(weights_dir, tmp_path):
    mine = tmp_path / "mine.pth"
    torch.save(random_openface().state_dict(), mine)
    assert resolve_pretrained("openface", files={"openface": str(mine)}).available
    mine.write_bytes(b"retrained, say")
    assert resolve_pretrained("openface", files={"openface": str(mine)}).available
    assert not (weights_dir / LEDGER_NAME).exists() and not (tmp_path / LEDGER_NAME).exists()


def test_an_unreadable_ledger_is_named_with_the_fix(weights_dir):
    torch.save(random_openface().state_dict(), weights_dir / "openface_weights.pth")
    (weights_dir / LEDGER_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{weights_dir / LEDGER_NAME}: not a readable SHA-256 ledger .*delete it"):
        resolve_pretrained("openface")
