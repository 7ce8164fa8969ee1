"""``ferbench export`` and ``ferbench predict``: the chosen arm taken out of an experiment and used.

Everything is checked against the experiment itself, not against the export code: the arm's tested weights
loaded here from its trial folder (``selected_weights.pt``, else the newest checkpoint), the trial's own
test predictions (``test_predictions.npz``) and the report's own Recommendation line. The shared reference
experiment is only read: exports go to tmp folders, and the default destination is tested on a copy.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.cli.main import main
from ferbench.harness.train.augment import InputAdapter

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"
MOBILENET = "mobilenet_v1_pretrained_baseline_s0"  # three RGB channels fed from grayscale data
PSEUDO_LABEL = "small_cnn_random_pseudo_label_s1"  # its tested weights are selected_weights.pt
INPUT_SIZE = 24  # the reference's data.image_size, with train.input_size=data
TOLERANCE = 1e-4


# --------------------------------------------------------------------------- the experiment, read independently


def _trial_folder(experiment: Path, arm_id: str) -> Path:
    folders = [p for p in experiment.glob(f"{arm_id}_*") if (p / "params.json").is_file()]
    assert len(folders) == 1, folders
    return folders[0]


@functools.cache
def trial_model(experiment: Path, arm_id: str) -> torch.nn.Module:
    """The arm's tested weights in the registry's plain build, loaded without the export code (once per arm)."""
    folder = _trial_folder(experiment, arm_id)
    if (folder / "selected_weights.pt").is_file():
        state = torch.load(folder / "selected_weights.pt", weights_only=True)
    else:
        newest = max(folder.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
        state = torch.load(newest / "checkpoint.pt", weights_only=True)["model"]
    backbone = json.loads((folder / "params.json").read_text())["arm"]["backbone"]
    model = create_backbone(backbone, 7)
    model.load_state_dict(state)
    return model.eval()


def model_batch(images: np.ndarray, arm_id: str) -> torch.Tensor:
    """The trial's own input step on images in the dataset's stored form."""
    info = get_backbone_info(arm_id.split("_pretrained")[0].split("_random")[0])
    adapter = InputAdapter(INPUT_SIZE, info.in_chans, info.channel_order, info.mean, info.std)
    return adapter(torch.from_numpy(images))


def softmax(logits) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.asarray(logits)), dim=1).numpy()


def onnx_probabilities(folder: Path, batch: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return softmax(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])


def torch_probabilities(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return softmax(model(batch))


@pytest.fixture(scope="module")
def experiment(reference_study) -> Path:
    return reference_study.experiment_dir


@pytest.fixture(scope="module")
def synthfer_test(experiment) -> tuple[np.ndarray, np.ndarray]:
    """(dataset indices, images) of the reference's SynthFER test split, generated again from its spec."""
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.data.splits import load_splits
    from ferbench.harness.study.experiment import read_stored_spec

    dataset = load_dataset(read_stored_spec(experiment).data)
    manifest = json.loads((experiment / "ferbench" / "manifest.json").read_text())
    assert dataset.fingerprint() == manifest["dataset"]["fingerprint_sha256"]  # the images the trials saw
    test = load_splits(experiment / "ferbench" / "splits.npz")[0]["test"]
    return test, dataset.images[test]


@pytest.fixture(scope="module")
def exports(experiment, tmp_path_factory) -> dict[str, Path]:
    """Written once: the default arm through the CLI (ONNX), MobileNet as ONNX and as safetensors, and a
    pseudo-labelling arm as TorchScript."""
    from ferbench.harness.export.writer import export_arm

    out = tmp_path_factory.mktemp("exports")
    assert main(["export", str(experiment), "--format", "onnx", "--out", str(out / "default")]) == 0
    folders = {"default": out / "default"}
    for key, arm, fmt in (("mobilenet_onnx", MOBILENET, "onnx"), ("mobilenet_safetensors", MOBILENET, "safetensors"),
                          ("pseudo_label_torchscript", PSEUDO_LABEL, "torchscript")):
        folders[key] = export_arm(experiment, arm, fmt, out / key).folder
    return folders


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# --------------------------------------------------------------------------- the exported models


def test_onnx_predicts_as_the_trials_checkpoint_on_synthfer_test_images(experiment, exports, synthfer_test):
    indices, images = synthfer_test
    for folder in (exports["mobilenet_onnx"], exports["default"]):
        arm = _config(folder)["source"]["arm_id"]
        batch = model_batch(images, arm)
        expected = torch_probabilities(trial_model(experiment, arm), batch)
        got = onnx_probabilities(folder, batch)
        assert np.abs(got - expected).max() < TOLERANCE, arm
        assert (got.argmax(1) == expected.argmax(1)).all()
        # ... and the trial's test step computed the same numbers for these images
        with np.load(_trial_folder(experiment, arm) / "test_predictions.npz") as stored:
            assert stored["indices"].tolist() == indices.tolist()
            assert np.abs(stored["probabilities"] - expected).max() < 1e-5, arm


def _ckplus_images(per_class: int = 3) -> tuple[list[Path], np.ndarray]:
    """A few real CK+ faces per class as files, and as the reference's loader would store them (grey, 24×24)."""
    if not CKPLUS48.is_dir():
        pytest.skip(f"CK+ 48x48 images not found under {CKPLUS48} (research data, not shipped with the project)")
    files = [f for folder in sorted(p for p in CKPLUS48.iterdir() if p.is_dir()) for f in sorted(folder.glob("*.png"))[:per_class]]
    stored = [np.asarray(Image.open(f).convert("L").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)) for f in files]
    return files, np.stack(stored)


def test_onnx_predicts_as_the_trials_checkpoint_on_real_ckplus_faces(experiment, exports):
    files, images = _ckplus_images()
    assert len(files) >= 14
    for folder in (exports["mobilenet_onnx"], exports["default"]):
        arm = _config(folder)["source"]["arm_id"]
        batch = model_batch(images, arm)
        expected = torch_probabilities(trial_model(experiment, arm), batch)
        assert np.abs(onnx_probabilities(folder, batch) - expected).max() < TOLERANCE, arm


def test_torchscript_and_safetensors_round_trips_match_the_checkpoint(experiment, exports, synthfer_test):
    from safetensors.torch import load_file

    _, images = synthfer_test
    traced = torch.jit.load(str(exports["pseudo_label_torchscript"] / "model.pt"))
    reference = trial_model(experiment, PSEUDO_LABEL)
    batch = model_batch(images, PSEUDO_LABEL)
    assert np.abs(torch_probabilities(traced, batch) - torch_probabilities(reference, batch)).max() < TOLERANCE
    stored = load_file(str(exports["mobilenet_safetensors"] / "model.safetensors"))
    expected = trial_model(experiment, MOBILENET).state_dict()
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[name], expected[name]) for name in expected)


def test_the_default_arm_is_the_recommendations_best_model_by_test_accuracy(experiment, exports):
    """The report's own "Best test accuracy" line names the model; of its arms, the best test accuracy wins."""
    from ferbench.reports import recommended_arm

    report = (experiment / "report" / "report.md").read_text()
    model = re.search(r"\*\*Best test accuracy\*\* \(`test_acc`\): `([^`]+)`", report).group(1)
    trials = pd.read_csv(experiment / "report" / "tables" / "trials.csv")
    names = trials["backbone"] + "_" + trials["init"] + "_" + trials["variant"]  # the study has two variants
    arms = trials[(names == model) & (trials["status"] == "completed")]
    best = arms[arms["test_acc"] == arms["test_acc"].max()]["arm_id"].iloc[0]  # ties: the first in the grid
    assert _config(exports["default"])["source"]["arm_id"] == best == recommended_arm(experiment)


def test_config_json_says_what_the_model_is_where_it_came_from_and_how_to_feed_it(experiment, exports):
    import ferbench

    manifest = json.loads((experiment / "ferbench" / "manifest.json").read_text())
    config = _config(exports["mobilenet_onnx"])
    folder = _trial_folder(experiment, MOBILENET)
    assert (config["format"], config["weights_file"], config["backbone"], config["head"]) == ("onnx", "model.onnx", "mobilenet_v1", "linear")
    assert config["class_names"] == manifest["dataset"]["class_names"]
    assert config["images"] == {"size": [24, 24], "mode": "grayscale", "face_detect": False, "face_size": 48}
    assert config["input"]["size"] == INPUT_SIZE and config["input"]["channels"] == 3
    assert (config["input"]["channel_order"], config["input"]["mean"], config["input"]["std"]) == ("RGB", [0.5] * 3, [0.5] * 3)
    assert config["input"]["channel_handling"] == "grayscale repeated to 3 channels"
    assert config["source"]["arm_id"] == MOBILENET and config["source"]["trial"] == folder.name
    assert config["source"]["experiment"] == experiment.name and Path(config["source"]["experiment_path"]) == experiment.resolve()
    assert (config["source"]["seed"], config["source"]["init"]) == (0, "pretrained")
    last = json.loads(max(folder.glob("checkpoint_*/history.json")).read_text())[-1]
    assert config["checkpoint"] == {"select": "last", "selected_epoch": last["selected_epoch"],
                                    "weights_from": f"{folder.name}/checkpoint_000003/checkpoint.pt"}
    assert config["test_scores"]["test_acc"] == last["test_acc"]
    assert config["ferbench_version"] == ferbench.__version__
    assert config["check"]["max_abs_difference_vs_trial_test_predictions"] < 1e-5
    pseudo = _config(exports["pseudo_label_torchscript"])["checkpoint"]
    assert pseudo["weights_from"] == f"{_trial_folder(experiment, PSEUDO_LABEL).name}/selected_weights.pt"
    assert "selected_round" in pseudo


# --------------------------------------------------------------------------- predict


def _write_files(folder: Path, images: np.ndarray) -> list[Path]:
    """The test images as grayscale PNG, RGB PNG and BMP files (all lossless), in turn."""
    folder.mkdir()
    files = []
    for i, image in enumerate(images):
        kind = ("grey.png", "rgb.png", "grey.bmp")[i % 3]
        path = folder / f"{i:03d}_{kind}"
        Image.fromarray(np.stack([image] * 3, axis=-1) if kind == "rgb.png" else image).save(path)
        files.append(path)
    return files


def _stored_predictions(experiment: Path, arm: str, indices: np.ndarray) -> np.ndarray:
    with np.load(_trial_folder(experiment, arm) / "test_predictions.npz") as stored:
        position = {int(index): row for row, index in enumerate(stored["indices"])}
        return stored["probabilities"][[position[int(i)] for i in indices]]


def test_predict_on_image_files_gives_the_trials_test_probabilities(experiment, exports, synthfer_test, tmp_path, capsys):
    indices, images = synthfer_test
    files = _write_files(tmp_path / "images", images[:12])
    config = _config(exports["default"])
    expected = _stored_predictions(experiment, config["source"]["arm_id"], indices[:12])
    classes = config["class_names"]

    assert main(["predict", str(exports["default"]), *map(str, files), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in output["predictions"]] == [str(f) for f in files] and output["class_names"] == classes
    got = np.array([[p["probabilities"][name] for name in classes] for p in output["predictions"]])
    assert np.abs(got.sum(1) - 1).max() < 1e-5
    assert np.abs(got - expected).max() < 1e-5
    assert [p["predicted"] for p in output["predictions"]] == [classes[i] for i in expected.argmax(1)]

    assert main(["predict", str(exports["default"]), *map(str, files)]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["image", "predicted", *classes]
    table = np.array([[float(v) for v in row.split()[2:]] for row in rows])
    assert [row.split()[0] for row in rows] == [str(f) for f in files]
    assert np.abs(table.sum(1) - 1).max() < 1e-3 and np.abs(table - expected).max() <= 5.1e-5


def test_predict_runs_each_format_as_its_trial_tested_it(experiment, exports, synthfer_test, tmp_path, capsys):
    indices, images = synthfer_test
    files = _write_files(tmp_path / "images", images[:6])
    for key in ("mobilenet_onnx", "mobilenet_safetensors", "pseudo_label_torchscript"):
        assert main(["predict", str(exports[key]), *map(str, files), "--json"]) == 0
        got = np.array([list(p["probabilities"].values()) for p in json.loads(capsys.readouterr().out)["predictions"]])
        expected = _stored_predictions(experiment, _config(exports[key])["source"]["arm_id"], indices[:6])
        assert np.abs(got - expected).max() < 1e-5, key


def test_face_detection_feeds_the_model_the_face_crop(experiment, exports, tmp_path, capsys):
    """A real face upscaled onto a larger grey canvas: --face-detect gives the model the crop, as data.face_detect does."""
    from ferbench.harness.data.face_detect import crop_faces

    files, _ = _ckplus_images(per_class=1)
    canvas = np.full((200, 200), 128, np.uint8)
    canvas[40:168, 30:158] = np.asarray(Image.open(files[3]).convert("L").resize((128, 128), Image.Resampling.BICUBIC))
    Image.fromarray(canvas).save(tmp_path / "photo.png")
    crops, missed = crop_faces([canvas], INPUT_SIZE)
    assert missed == []
    assert main(["predict", str(exports["mobilenet_onnx"]), str(tmp_path / "photo.png"), "--face-detect", "--json"]) == 0
    got = list(json.loads(capsys.readouterr().out)["predictions"][0]["probabilities"].values())
    expected = torch_probabilities(trial_model(experiment, MOBILENET), model_batch(crops, MOBILENET))[0]
    assert np.abs(np.array(got) - expected).max() < TOLERANCE


# --------------------------------------------------------------------------- errors and where files go


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_arm_lists_the_arms_and_writes_nothing(experiment, tmp_path, capsys):
    assert main(["export", str(experiment), "no_such_arm", "--format", "safetensors", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    arms = [arm["arm_id"] for arm in json.loads((experiment / "ferbench" / "grid.json").read_text())]
    assert "no_such_arm" in line and all(arm in line for arm in arms)
    assert not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "not a FERBench experiment" in _one_error_line(capsys)


def _small_copy(experiment: Path, folder: Path, arms: list[str]) -> Path:
    """The experiment's ferbench/ folder and the trial folders of ``arms`` (the others then have none)."""
    shutil.copytree(experiment / "ferbench", folder / "ferbench")
    for arm in arms:
        trial = _trial_folder(experiment, arm)
        shutil.copytree(trial, folder / trial.name)
    return folder


def test_an_arm_that_did_not_complete_is_named_with_its_status(experiment, tmp_path, capsys):
    arm = "small_cnn_random_baseline_s1"
    copy = _small_copy(experiment, tmp_path / "exp", [arm])
    trial = _trial_folder(copy, arm)
    shutil.rmtree(max(trial.glob("checkpoint_*")))  # its last (final) checkpoint gone: not finished
    assert main(["export", str(copy), arm, "--format", "onnx"]) == 2
    line = _one_error_line(capsys)
    assert f"arm {arm} is incomplete" in line and "no arm of this experiment completed" in line
    (trial / "error.txt").write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    assert main(["export", str(copy), arm, "--format", "onnx"]) == 2
    assert f"arm {arm} is failed (RuntimeError: CUDA out of memory)" in _one_error_line(capsys)
    grid = json.loads((copy / "ferbench" / "grid.json").read_text())
    other = next(a for a in grid if a["arm_id"] == MOBILENET)
    other.update(status="unavailable", reason="pretrained weights not found offline")
    (copy / "ferbench" / "grid.json").write_text(json.dumps(grid))
    assert main(["export", str(copy), MOBILENET, "--format", "onnx"]) == 2
    assert f"arm {MOBILENET} is unavailable (pretrained weights not found offline)" in _one_error_line(capsys)
    assert not (copy / "export").exists()


def test_the_default_folder_is_replaced_whole_and_other_folders_are_refused(experiment, tmp_path, capsys):
    arm = "small_cnn_random_baseline_s1"
    copy = _small_copy(experiment, tmp_path / "exp", [arm])
    assert main(["export", str(copy), arm, "--format", "torchscript"]) == 0
    folder = copy / "export" / arm
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.pt"]
    assert main(["export", str(copy), arm, "--format", "safetensors"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in (copy / "export").iterdir()] == [arm]  # no staging or old folder left behind
    assert str(folder) in capsys.readouterr().out
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(copy), arm, "--format", "onnx", "--out", str(mine)]) == 2
    assert "is not a FERBench export" in _one_error_line(capsys)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_predict_names_an_unreadable_image_or_one_without_a_face(exports, tmp_path, capsys):
    good, broken, grey = tmp_path / "good.png", tmp_path / "broken.png", tmp_path / "grey.png"
    Image.fromarray(np.full((24, 24), 100, np.uint8)).save(good)
    broken.write_bytes(b"not an image")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(grey)
    assert main(["predict", str(exports["default"]), str(good), str(broken)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"ferbench: error: {broken}: unreadable image") and capsys.readouterr().out == ""
    assert main(["predict", str(exports["default"]), str(tmp_path / "missing.jpg")]) == 2
    assert f"{tmp_path / 'missing.jpg'}: unreadable image" in _one_error_line(capsys)
    assert main(["predict", str(exports["default"]), str(grey), "--face-detect"]) == 2
    assert f"{grey}: no face found" in _one_error_line(capsys)
    assert main(["predict", str(tmp_path), str(good)]) == 2
    assert "no config.json" in _one_error_line(capsys)
