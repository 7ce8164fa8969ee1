"""``timm:hf-hub:ORG/REPO`` backbones: accepted by the spec, built from the Hub's config, loaded from the
Hugging Face cache, SHA-256 recorded and verified, and offline failures that say what to copy where.

No test reaches the internet. A tiny timm model is exported with timm's own ``save_for_hf`` and placed
in the hub cache exactly as huggingface_hub lays it out (``blobs/<etag>``, ``snapshots/<commit>/<file>``
linking to the blob, ``refs/main``); downloads go to a Hub-compatible server on 127.0.0.1, fetched with
huggingface_hub itself.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from ferbench.backbones import create_backbone, get_backbone_info, is_known_backbone, resolve_pretrained
from ferbench.backbones.hf_hub import HubUnavailable
from ferbench.backbones.integrity import LEDGER_NAME
from ferbench.harness.cli.weights_cmd import add_weights_parser, cmd_weights
from ferbench.harness.spec import arm_id, load_spec

REPO = "ferbench-test/tiny-resnet"
NAME = f"timm:hf-hub:{REPO}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_CFG = {"mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3), "input_size": (3, 64, 64)}  # not timm's test_resnet defaults


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny timm model (5 classes, non-default BatchNorm statistics) saved as a Hub repository's files."""
    torch.manual_seed(11)
    model = timm.create_model("test_resnet", num_classes=5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    folder = tmp_path_factory.mktemp("export")
    save_for_hf(model, str(folder), model_config={"pretrained_cfg": HUB_CFG}, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def etag(path: Path) -> str:
    """The Hub's ETag: the SHA-256 of an LFS file (weights), the git blob SHA-1 of a small one (config.json)."""
    data = path.read_bytes()
    if path.suffix in (".safetensors", ".bin"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def publish(hub_cache: Path, repo_id: str, folder: Path) -> Path:
    """Place ``folder``'s files in the hub cache as huggingface_hub does; returns the snapshot folder."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in folder.iterdir():
        (repo / "blobs" / etag(file)).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("../../blobs") / etag(file))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_repo(isolated_weights, export) -> Path:
    """The export in the test's empty hub cache, offline; returns its snapshot folder."""
    return publish(isolated_weights[1], REPO, export[0])


def ferbench_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferbench")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_weights(parser.parse_args(["weights", *argv]))


def ledger(weights_dir: Path) -> dict:
    return json.loads((weights_dir / LEDGER_NAME).read_text())["files"]


def test_hub_names_are_accepted_by_the_spec_without_network(isolated_weights):
    """Accepting the name reads nothing: the config is needed only when the backbone is used."""
    assert is_known_backbone(NAME) and is_known_backbone("timm:hf-hub:timm/resnet18.a1_in1k")
    for bad in ("timm:hf-hub:", "timm:hf-hub:no-org", "timm:hf-hub:a/b/c", "timm:hf-hub:a--b/c", "timm:hf-hub:a/b c",
                "hf-hub:a/b", "timm:local-dir:/tmp/x"):
        assert not is_known_backbone(bad), bad
    spec = load_spec("quick", [f"grid.backbone=[small_cnn,{NAME}]", "grid.init=[random,pretrained]"])
    ids = [arm["arm_id"] for arm in spec.arms() if arm["backbone"] == NAME]
    assert ids and all(":" not in i and "/" not in i and i.startswith("timm-hf-hub-ferbench-test--tiny-resnet_") for i in ids)
    assert arm_id({"backbone": NAME, "init": "random", "variant": "baseline", "seed": 0}) in ids


def test_hub_backbone_uses_the_hubs_pretrained_config(hub_repo):
    info = get_backbone_info(NAME)
    assert (info.family, info.timm_name, info.input_size, info.in_chans, info.channel_order) == ("timm", "test_resnet", 64, 3, "RGB")
    assert info.mean == HUB_CFG["mean"] and info.std == HUB_CFG["std"]
    assert info.pretrained_sources == (f"hf-hub:{REPO}",)
    torch.manual_seed(0)
    model = create_backbone(NAME, 7).eval()  # random init: the architecture alone
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)


def test_hub_weights_load_from_the_cache_and_equal_the_saved_tensors(hub_repo, export):
    status = resolve_pretrained(NAME)
    assert status.available and status.source == f"hf-cache:{REPO}"
    assert status.path == str(hub_repo / "model.safetensors")
    torch.manual_seed(999)  # another seed: loaded tensors cannot match by chance
    loaded = create_backbone(NAME, 7, weights_file=status.path).state_dict()
    saved = export[1]
    backbone_keys = [k for k in saved if not k.startswith("fc.")]
    assert len(backbone_keys) > 20 and set(loaded) == set(saved)
    for key in backbone_keys:
        assert torch.equal(loaded[key], saved[key]), key
    assert loaded["fc.weight"].shape == (7, 96)  # the 5-class classifier was replaced
    assert not torch.equal(create_backbone(NAME, 7).state_dict()["conv1.0.weight"], saved["conv1.0.weight"])


def test_hub_weights_in_the_weights_folder_use_a_collision_free_name(hub_repo, isolated_weights, export):
    """With only the config in the cache, the weights may sit in the weights folder, named so that two
    repositories never share a file ("/" becomes "--", which the Hub forbids in names)."""
    weights_dir, _ = isolated_weights
    (hub_repo / "model.safetensors").unlink()
    target = weights_dir / "timm-hf-hub-ferbench-test--tiny-resnet.safetensors"
    status = resolve_pretrained(NAME)
    assert not status.available and f"or place the weights at {target}" in status.message
    target.write_bytes((export[0] / "model.safetensors").read_bytes())
    status = resolve_pretrained(NAME)
    assert status.available and status.source == str(weights_dir) and status.path == str(target.resolve())
    assert ledger(weights_dir)[target.name]["how"] == "first used"
    loaded = create_backbone(NAME, 7, weights_file=status.path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in export[1].items() if not k.startswith("fc."))


def test_sha256_is_recorded_at_first_use_and_a_tampered_file_is_refused(hub_repo, isolated_weights, capsys):
    weights_dir, _ = isolated_weights
    weights = hub_repo / "model.safetensors"
    blob = weights.resolve()
    good = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert blob.name == good  # the layout names an LFS blob after its SHA-256, as the Hub does
    assert resolve_pretrained(NAME).available
    assert ledger(weights_dir)[str(weights)]["sha256"] == good

    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    blob.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    status = resolve_pretrained(NAME)
    assert not status.available and status.source == "sha256-mismatch"
    message = status.message
    assert message.startswith(f"{NAME}: {weights}: SHA-256 mismatch: expected {good} (") and "\n" not in message
    assert f"actual {bad}" in message
    assert f"delete {blob} and {weights}, then run `ferbench weights fetch {NAME}`" in message

    assert ferbench_weights("verify", NAME) == 1
    out = capsys.readouterr().out
    assert f"FAILED  {weights}  sha256={bad}: differs from the Hub's sha256 {good}" in out
    assert ferbench_weights("verify", "--accept", NAME) == 1  # a publisher's hash cannot be overruled
    capsys.readouterr()
    assert ledger(weights_dir)[str(weights)]["sha256"] == good  # the record is not replaced


def test_offline_without_the_files_fails_fast_saying_what_to_copy_where(isolated_weights, capsys):
    _, hub_cache = isolated_weights
    folder = hub_cache / "models--ferbench-test--tiny-resnet"
    start = time.monotonic()
    status = resolve_pretrained(NAME)
    assert not status.available and status.source == "missing"
    for part in (f"`ferbench weights fetch {NAME}` on a machine with internet", f"hf download {REPO} config.json model.safetensors",
                 f"copy its Hugging Face cache folder {folder.name} to {folder} here", "HF_HUB_OFFLINE=1"):
        assert part in status.message, part
    with pytest.raises(HubUnavailable, match="is not on this machine"):
        create_backbone(NAME, 7)
    assert ferbench_weights("fetch", NAME) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ferbench: error: {NAME}: could not download {REPO}") and err.count("\n") == 1
    assert f"copy its Hugging Face cache folder {folder.name} to {folder} here" in err
    assert time.monotonic() - start < 5
    assert not folder.exists()


# --- downloads through huggingface_hub, from a Hub-compatible server on 127.0.0.1 ----------------------

class _Hub(BaseHTTPRequestHandler):
    """``/<org>/<repo>/resolve/<revision>/<file>`` of ``files`` with the headers huggingface_hub reads;
    ``wrong_etag`` announces another SHA-256 than the bytes sent (a corrupted transfer or mirror)."""

    def __init__(self, *args, files: dict[str, Path], wrong_etag: bool, **kwargs):
        self.files, self.wrong_etag = files, wrong_etag
        super().__init__(*args, **kwargs)

    def _answer(self, body: bool) -> None:
        parts = self.path.lstrip("/").split("/")
        path = self.files.get("/".join(parts[4:])) if "/".join(parts[:2]) == REPO and parts[2:3] == ["resolve"] else None
        self.send_response(200 if path else 404)
        self.send_header("X-Repo-Commit", COMMIT)
        if path is None:
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_header("ETag", f'"{"0" * 64 if self.wrong_etag and path.suffix == ".safetensors" else etag(path)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub_server(export, isolated_weights, monkeypatch):
    """``serve(wrong_etag=False)`` → base URL of a Hub endpoint serving the export; downloads allowed."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FERBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once at import, like the cache path
    servers = []

    def serve(wrong_etag: bool = False) -> str:
        files = {p.name: p for p in export[0].iterdir()}
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Hub, files=files, wrong_etag=wrong_etag))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_downloads_with_huggingface_hub_and_records_the_hash(hub_server, isolated_weights, export, capsys):
    weights_dir, hub_cache = isolated_weights
    assert ferbench_weights("fetch", NAME, "--mirror", hub_server()) == 0
    snapshot = hub_cache / "models--ferbench-test--tiny-resnet" / "snapshots" / COMMIT
    sha256 = hashlib.sha256((export[0] / "model.safetensors").read_bytes()).hexdigest()
    assert capsys.readouterr().out == f"{NAME}: {snapshot / 'model.safetensors'}  sha256={sha256}\n"
    entry = ledger(weights_dir)[str(snapshot / "model.safetensors")]
    assert entry["sha256"] == sha256 and entry["how"] == f"downloaded from the Hugging Face Hub ({REPO})"
    assert (snapshot / "config.json").read_bytes() == (export[0] / "config.json").read_bytes()
    status = resolve_pretrained(NAME)
    assert status.available and status.path == str(snapshot / "model.safetensors")
    loaded = create_backbone(NAME, 7, weights_file=status.path).state_dict()
    assert torch.equal(loaded["conv1.0.weight"], export[1]["conv1.0.weight"])
    assert ferbench_weights("fetch", NAME, "--mirror", "http://127.0.0.1:9") == 0  # present: nothing is downloaded
    assert "already present" in capsys.readouterr().out


def test_a_download_whose_hash_is_not_the_hubs_is_deleted(hub_server, isolated_weights, capsys):
    _, hub_cache = isolated_weights
    assert ferbench_weights("fetch", NAME, "--mirror", hub_server(wrong_etag=True)) == 2
    err = capsys.readouterr().err
    assert f"SHA-256 mismatch for {NAME}: expected {'0' * 64}" in err and err.count("\n") == 1
    assert not any((hub_cache / "models--ferbench-test--tiny-resnet" / "blobs").glob("0" * 64))
    assert not resolve_pretrained(NAME).available


def test_an_unreachable_hub_fails_within_seconds(hub_server, isolated_weights, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    assert ferbench_weights("fetch", NAME, "--mirror", closed) == 2  # huggingface_hub alone retries for ~20 s
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert f"could not download {closed}/{REPO}/resolve/main/config.json (ConnectError" in err
    assert "Offline? To place the files by hand, run `ferbench weights fetch" in err


def test_a_repository_that_is_not_a_timm_model_is_named(isolated_weights, tmp_path):
    folder = tmp_path / "not_timm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))  # a transformers config
    snapshot = publish(isolated_weights[1], REPO, folder)
    status = resolve_pretrained(NAME)
    assert not status.available and status.source == "unusable"
    assert status.message.startswith(f"{NAME}: {snapshot / 'config.json'}: not a timm model config")
