"""Preflight checks what is cheap first: a problem knowable in a second (resources, storage, paths,
weights on disk) stops it before the dataset is decoded, weights are downloaded or synth-identity
weights are pretrained (minutes on a slow machine), and those problems are reported together.

The order is observed through what the expensive steps leave behind, never through timings: a
decoded dataset is written to the dataset cache, pretrained synth-identity weights to their cache
(both under ``$FERBENCH_CACHE_DIR``, a fresh folder per test), and a download is a request to a
real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferbench.harness.cli.main import main
from ferbench.harness.spec import load_spec
from ferbench.harness.study.preflight import PreflightError, run_preflight

GPU_LINE = "resources.gpu: each trial asks for 1.0 GPU but this machine has 0; use --set resources.gpu=0 here"

needs_no_gpu = pytest.mark.skipif(torch.cuda.device_count() > 0, reason="the GPU request must be one this machine cannot serve")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh ``$FERBENCH_CACHE_DIR`` (datasets, synth-identity weights); not attached to a cluster."""
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "cache"


def written(folder: Path) -> list[str]:
    """Every file under ``folder``, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write_faces(folder: Path, counts: dict[str, int]) -> Path:
    """Class folders of distinct 16×16 grey PNGs."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def faces_study(faces: Path, tmp_path: Path, *overrides: str):
    """The quick study (synth-identity pretrained arms) on a folder dataset that the cache keeps."""
    return load_spec("quick", ["data.format=folder", f"data.path={faces}", "data.image_size=16",
                               f"run.storage={tmp_path / 'results'}", *overrides])


@needs_no_gpu
def test_a_gpu_request_without_a_gpu_is_refused_before_the_data_is_decoded_or_weights_pretrained(tmp_path, cache):
    faces = write_faces(tmp_path / "faces", {"angry": 20, "happy": 20, "sad": 20})
    with pytest.raises(PreflightError) as caught:
        run_preflight(faces_study(faces, tmp_path, "resources.gpu=1"))
    assert str(caught.value).startswith(GPU_LINE) and len(str(caught.value).splitlines()) == 1
    assert written(cache) == []  # no dataset cache (never decoded), no synth-identity weights (never pretrained)
    assert not (tmp_path / "results").exists()


def test_a_problem_found_by_decoding_stops_before_synth_identity_pretraining(tmp_path, cache):
    """The control of the test above: with the cheap checks passed, the dataset is decoded (and
    cached, so the cache is a faithful witness); its problem still stops preflight before pretraining."""
    faces = write_faces(tmp_path / "faces", {"angry": 20, "happy": 20, "sad": 20, "fear": 1})
    with pytest.raises(PreflightError, match=r"^split: class 'fear' \(1 image\) has fewer than the 3"):
        run_preflight(faces_study(faces, tmp_path, "resources.gpu=0"))
    assert written(cache) and {Path(f).parts[0] for f in written(cache)} == {"datasets"}  # decoded and cached…
    assert not (cache / "synth-identity").exists()  # …but not pretrained


@needs_no_gpu
def test_every_cheap_problem_is_reported_together_before_anything_expensive(tmp_path, cache, isolated_weights, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    (tmp_path / "afile").write_text("not a folder")
    storage, data = tmp_path / "afile" / "results", tmp_path / "no-such-faces"
    spec = load_spec("quick", [
        "resources.gpu=1", "resources.cpu=100000", f"run.storage={storage}", "data.format=folder", f"data.path={data}",
        "grid.backbone=[small_cnn,openface]", "weights.sources.openface=published", "weights.download=false",
        "run.allow_unavailable=false",
    ])
    with pytest.raises(PreflightError) as caught:
        run_preflight(spec)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == ["run.storage", "resources.gpu", "resources.cpu", "data.path", "openface"]
    assert f"{data} does not exist" in lines[3] and "ferbench weights fetch openface" in lines[4]
    assert lines[5].startswith("run.allow_unavailable=false: fix the weights above") and len(lines) == 6
    assert written(cache) == []


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving OpenFace weights; ``requests`` lists the paths asked for."""
    from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet

    folder = tmp_path / "served"
    folder.mkdir()
    torch.manual_seed(1)
    torch.save(OpenFaceNet().state_dict(), folder / "openface_weights.pth")
    requests: list[str] = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


@needs_no_gpu
def test_published_weights_are_downloaded_only_after_the_cheap_checks_pass(tmp_path, mirror, isolated_weights, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "FERBENCH_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "deepface_home"))
    base, requests = mirror
    study = ["grid.backbone=[openface]", "grid.init=[pretrained]", "grid.variant=[baseline]", "weights.source=published",
             "data.num_images=70", f"weights.dir={tmp_path / 'weights'}", f"weights.mirror={base}",
             f"run.storage={tmp_path / 'results'}"]
    with pytest.raises(PreflightError) as caught:
        run_preflight(load_spec("quick", [*study, "resources.gpu=1"]))
    assert str(caught.value).splitlines() == [GPU_LINE + ", or submit the study to a GPU cluster"]
    assert requests == [] and not (tmp_path / "weights").exists()
    preflight = run_preflight(load_spec("quick", study))  # the control: the same study on CPU downloads them
    assert requests == ["/openface_weights.pth"]
    assert preflight.weight_files == {"openface": str((tmp_path / "weights" / "openface_weights.pth").resolve())}


@needs_no_gpu
def test_ferbench_run_refuses_a_gpu_request_in_one_line_with_nothing_made(tmp_path, cache, capsys):
    """The issue's case as a user meets it: the quick study asked for a GPU on a laptop."""
    code = main(["run", "--storage", str(tmp_path / "results"), "--set", "resources.gpu=1"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.splitlines() == [f"ferbench: error: {GPU_LINE}, or submit the study to a GPU cluster"]
    assert captured.out == "" and written(cache) == [] and not (tmp_path / "results").exists()


@needs_no_gpu
@pytest.mark.parametrize("address, refused", [("local", True), ("", True), ("ray://head:10001", False)])
def test_the_gpu_check_is_skipped_only_on_a_cluster(tmp_path, cache, monkeypatch, address, refused):
    """RAY_ADDRESS=local is a private Ray on this machine: a GPU request is refused there as without it;
    on a cluster the autoscaler may add GPU nodes."""
    monkeypatch.setenv("RAY_ADDRESS", address)
    faces = write_faces(tmp_path / "faces", {"angry": 20, "happy": 20, "sad": 20})
    spec = faces_study(faces, tmp_path, "resources.gpu=1", "grid.init=[random]")
    if refused:
        with pytest.raises(PreflightError, match="resources.gpu"):
            run_preflight(spec)
    else:
        assert run_preflight(spec).runnable_arms
