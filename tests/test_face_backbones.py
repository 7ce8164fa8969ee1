"""The paper's four backbones: Keras-comparable parameter counts, any-size inputs, deepface weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet
from deepface.models.facial_recognition.pytorch.VGGFace import VggFaceBaseModel

from ferbench.backbones import backbone_parameter_counts, create_backbone, get_backbone_info, resolve_pretrained
from ferbench.harness.cli.main import main

RUN_PY = Path(__file__).resolve().parents[1] / "harness" / "run.py"

# The counts Smelyakov et al. quote (Keras' count_params, classifier removed).
PAPER_KERAS_PARAMS = {
    "mobilenet_v1": 3_228_864,
    "resnet50": 23_587_712,
    "openface": 3_743_280,
    "vggface": 134_260_544,
}


def test_keras_parameter_counts_match_the_paper(capsys):
    assert main(["backbones", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    for name, expected in PAPER_KERAS_PARAMS.items():
        assert rows[name]["keras_params"] == expected == backbone_parameter_counts(name)["keras_params"]
    # PyTorch counts: timm has no conv biases and keeps BN statistics as buffers, not parameters.
    assert rows["resnet50"]["params"] == 23_508_032 and rows["mobilenet_v1"]["params"] == 3_206_976
    assert rows["vggface"]["params"] == 134_260_544 and rows["vggface"]["embedding_dim"] == 4096
    assert rows["openface"]["embedding_dim"] == 128


@pytest.mark.parametrize("name, sizes", [("vggface", (224, 48)), ("openface", (96,))])
def test_forward_and_backward_at_native_and_small_sizes(name, sizes):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=7)
    for size in sizes:
        model.zero_grad()
        logits = model(torch.rand(2, 3, size, size))
        assert logits.shape == (2, 7)
        logits.sum().backward()
        assert model.get_classifier().weight.grad is not None
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.weight.grad.abs().sum() > 0  # gradients reach the first layer


def test_openface_is_fed_its_native_size_whatever_the_spec_asks():
    from ferbench.harness.spec import load_spec
    from ferbench.harness.train.trial import resolve_input_size

    spec = load_spec("quick", ["train.input_size=48"])
    assert get_backbone_info("openface").fixed_input_size
    assert resolve_input_size(spec, "openface", 48) == 96
    assert resolve_input_size(spec, "vggface", 48) == 48


def test_face_backbones_expect_bgr_in_zero_one():
    for name in ("vggface", "openface"):
        info = get_backbone_info(name)
        assert info.channel_order == "BGR" and info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)


def test_deepface_openface_weights_load_exactly(tmp_path):
    torch.manual_seed(1)
    reference = OpenFaceNet().eval()
    path = tmp_path / "openface_weights.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("openface", 7, weights_file=path).eval()
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model.trunk(x), reference(x))  # bit-identical embeddings


def test_deepface_vggface_weights_load_without_fc8(tmp_path):
    torch.manual_seed(2)
    reference = VggFaceBaseModel(include_top=True)  # deepface's file carries the 2,622-way fc8
    path = tmp_path / "vgg_face_weights.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("vggface", 7, weights_file=path).eval()
    reference.eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.trunk.embed(x), reference.embed(x))


def test_mismatched_face_weights_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "openface_weights.pth"
    torch.save(create_backbone("small_cnn", 7).state_dict(), path)
    with pytest.raises(ValueError, match="openface_weights.pth: not OpenFace weights"):
        create_backbone("openface", 7, weights_file=path)


def test_deepface_weights_folder_is_searched(tmp_path, monkeypatch, isolated_weights):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    missing = resolve_pretrained("openface")
    assert not missing.available and "openface_weights.pth" in missing.message
    folder = tmp_path / ".deepface" / "weights"
    folder.mkdir(parents=True)
    torch.save(OpenFaceNet().state_dict(), folder / "openface_weights.pth")
    found = resolve_pretrained("openface")
    assert found.available and found.path == str(folder / "openface_weights.pth")


def test_face_classifier_state_dicts_load_back_into_the_trunk(tmp_path):
    """synth-identity saves whole classifiers (``trunk.``-prefixed keys, another head size)."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    pretrained = create_backbone("openface", 10)
    path = tmp_path / "openface-identity.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(path))
    model = create_backbone("openface", 7, weights_file=path)
    for key, value in pretrained.trunk.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[key], value), key


def test_offline_study_without_face_weights_stops_in_preflight_naming_files_and_fetch_command(tmp_path, isolated_weights,
                                                                                            monkeypatch, capsys):
    weights_dir, _ = isolated_weights
    storage = tmp_path / "results"
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    code = main(["run", "quick", "--storage", str(storage), "--set", "grid.backbone=[vggface,openface]",
                 "--set", "grid.init=[pretrained]", "--set", "weights.source=published"])
    err = capsys.readouterr().err
    assert code == 2, err
    for name, filename in (("vggface", "vgg_face_weights.pth"), ("openface", "openface_weights.pth")):
        assert str(weights_dir / filename) in err
        assert f"`ferbench weights fetch {name}`" in err
    assert "Traceback" not in err
    assert not storage.exists()  # stopped before the experiment folder and before Ray


@pytest.mark.e2e
def test_run_py_offline_without_face_weights_exits_2_in_preflight(tmp_path, isolated_weights):
    """The same through ``harness/run.py`` in a fresh process (marker ``e2e``)."""
    weights_dir, hub_cache = isolated_weights
    storage = tmp_path / "results"
    env = {**os.environ, "DEEPFACE_HOME": str(tmp_path / "deepface_home"), "HF_HUB_CACHE": str(hub_cache)}
    result = subprocess.run(
        [sys.executable, str(RUN_PY), "quick", "--storage", str(storage),
         "--set", "grid.backbone=[vggface,openface]", "--set", "grid.init=[pretrained]",
         "--set", "weights.source=published"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    for name, filename in (("vggface", "vgg_face_weights.pth"), ("openface", "openface_weights.pth")):
        assert str(weights_dir / filename) in result.stderr
        assert f"`ferbench weights fetch {name}`" in result.stderr
    assert "Traceback" not in result.stderr
    assert not storage.exists()  # stopped before the experiment folder and before Ray


@pytest.fixture
def served_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a folder: the stand-in for a weights mirror."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _openface_study(tmp_path, *extra):
    from ferbench.harness.spec import load_spec

    return load_spec("quick", ["grid.backbone=[openface]", "grid.init=[pretrained]", "grid.variant=[baseline]", "weights.source=published",
                               "data.num_images=70", f"weights.dir={tmp_path / 'weights'}", *extra])


def test_preflight_downloads_missing_weights_when_online(served_folder, tmp_path, isolated_weights, monkeypatch):
    from ferbench.harness.study.preflight import run_preflight

    for var in ("HF_HUB_OFFLINE", "FERBENCH_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    folder, base = served_folder
    torch.manual_seed(1)
    torch.save(OpenFaceNet().state_dict(), folder / "openface_weights.pth")
    preflight = run_preflight(_openface_study(tmp_path, f"weights.mirror={base}"))
    fetched = tmp_path / "weights" / "openface_weights.pth"
    assert preflight.weight_files == {"openface": str(fetched.resolve())}
    assert fetched.read_bytes() == (folder / "openface_weights.pth").read_bytes()


def test_preflight_offline_download_failure_names_file_and_fetch_command(tmp_path, isolated_weights, monkeypatch):
    import socket

    from ferbench.harness.study.preflight import PreflightError, run_preflight

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(PreflightError) as caught:
        run_preflight(_openface_study(tmp_path, f"weights.mirror=http://127.0.0.1:{closed}"))
    message = str(caught.value)
    assert str(tmp_path / "weights" / "openface_weights.pth") in message
    assert "`ferbench weights fetch openface --dir" in message and "automatic download failed" in message
    assert not (tmp_path / "weights" / "openface_weights.pth").exists()
