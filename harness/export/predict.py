"""An exported folder loaded back and run on image files: ``ferbench predict``.

The folder's ``config.json`` says which weights file it holds and how the arm's trial prepared images;
the file is run by the runtime its format is for (ONNX Runtime, ``torch.jit.load``, or the backbone
registry's rebuild for ``safetensors``), so a prediction here is what a user of the file gets elsewhere.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ferbench.harness.export.arm import ExportError, build_network
from ferbench.harness.export.formats import CONFIG_FILE, FORMATS
from ferbench.harness.export.preprocess import Preprocessing, model_input, read_images

BATCH = 64  # images per forward pass: bounds memory for long lists of files


@dataclass(frozen=True)
class Prediction:
    image: str
    predicted: str
    probabilities: dict[str, float]  # class name → probability, in the model's output order


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"{path}: running an ONNX model needs onnxruntime: pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})[0]


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's notice that TorchScript is deprecated: the user asked for it
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(batch).float().numpy()

    return run


def _safetensors_runner(path: Path, config: dict) -> Callable[[torch.Tensor], np.ndarray]:
    from ferbench.backbones.registry import check_state_dict, load_state_dict_file

    model = build_network(config["backbone"], len(config["class_names"]), config["head"], config["model_options"])
    state = load_state_dict_file(path)
    check_state_dict(model, state, config["backbone"], path)
    model.load_state_dict(state)

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(batch).float().numpy()

    return run


class ExportedModel:
    """An exported arm: its config, its runtime, and the preprocessing its trial used."""

    def __init__(self, folder: Path, config: dict, run: Callable[[torch.Tensor], np.ndarray]):
        from ferbench.harness.tasks import get_task

        self.folder, self.config, self._run = folder, config, run
        self.class_names: tuple[str, ...] = tuple(config["class_names"])
        self.preprocessing = Preprocessing.from_config(config)
        self.task: Any = get_task(config["task"])  # owns how logits become probabilities

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Outputs for a float32 NCHW batch (``preprocess.model_input``)."""
        return np.asarray(self._run(batch.float().contiguous()), dtype=np.float32)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        return self.task.probabilities(torch.from_numpy(self.logits(batch))).numpy()

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for images in the dataset's stored form (uint8 N×H×W[×3]), in batches."""
        parts = [self.probabilities(model_input(images[lo:lo + BATCH], self.preprocessing)) for lo in range(0, len(images), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, paths: list[str | Path], face_detect: bool = False) -> list[Prediction]:
        """Read, prepare and classify image files; an unreadable one is an ``ImageError`` naming it."""
        paths = [Path(path) for path in paths]
        probabilities = self.predict_images(read_images(paths, self.preprocessing, face_detect))
        predicted = self.task.predicted(probabilities, self.class_names, self.config.get("thresholds"))
        return [Prediction(str(path), name, dict(zip(self.class_names, map(float, row))))
                for path, name, row in zip(paths, predicted, probabilities)]


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{folder}: no {CONFIG_FILE}; pass a folder written by `ferbench export`")
    try:
        config = json.loads(path.read_text())
        Preprocessing.from_config(config)
        missing = [key for key in ("format", "weights_file", "class_names", "task") if key not in config]
        if missing:
            raise KeyError(missing[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ExportError(f"{path}: not a readable export config ({type(err).__name__}: {err}); export the arm again") from None
    return config


def load_exported(folder: str | Path, config: dict | None = None) -> ExportedModel:
    """The exported model in ``folder`` (``config``: its config.json, already read)."""
    folder = Path(folder).expanduser()
    config = read_config(folder) if config is None else config
    fmt = config["format"]
    runners = {"onnx": _onnx_runner, "torchscript": _torchscript_runner}
    if fmt not in FORMATS:
        raise ExportError(f"{folder / CONFIG_FILE}: unknown format {fmt!r}; export the arm again with this version")
    path = folder / config["weights_file"]
    if not path.is_file():
        raise ExportError(f"{path}: missing; the export folder is incomplete, export the arm again")
    try:
        run = _safetensors_runner(path, config) if fmt == "safetensors" else runners[fmt](path)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - each runtime raises its own types for a cut or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(f"{path}: cannot be loaded as {fmt} ({first}); export the arm again") from None
    return ExportedModel(folder, config, run)
