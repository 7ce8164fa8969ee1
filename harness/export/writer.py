"""An arm written for use outside FERBench: one weights file and ``config.json``, in a folder that appears
whole or not at all.

Formats: ``safetensors`` (the state_dict; rebuilt through the backbone registry, needs FERBench),
``onnx`` (any ONNX runtime; the TorchScript-based exporter, which needs only the ``onnx`` package) and
``torchscript`` (``torch.jit.load``, no FERBench). Every format takes the float32 NCHW batch the trial's
test step fed the model and returns one logit per class; ``config.json`` says how to make that batch
from an image file and what the outputs mean.

Before the folder is moved into place the written file is loaded back the way ``ferbench predict``
loads it and run on the experiment's sample test images (``ferbench/samples.npz``): it must agree with
the PyTorch model, and the PyTorch model's agreement with the trial's own test predictions is recorded,
so a wrong checkpoint or a lossy export cannot pass unnoticed.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferbench.harness.export.arm import ArmModel, ExportError, load_arm
from ferbench.harness.export.formats import CONFIG_FILE, EXPORT_DIR, FORMATS
from ferbench.harness.export.preprocess import model_input
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.layout import TEST_PREDICTIONS_FILE, experiment_paths

ONNX_OPSET = 17
MAX_DIFFERENCE = 1e-4  # largest |probability difference| an export may show against the PyTorch model


@dataclass
class ExportResult:
    folder: Path
    config: dict


def default_folder(experiment_dir: Path, arm_id: str) -> Path:
    return Path(experiment_dir) / EXPORT_DIR / arm_id


def _write_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}, str(path),
              metadata={"format": "pt"})


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; the load-back check below decides
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    if importlib.util.find_spec("onnx") is None:  # the exporter writes its protobuf through it
        raise ExportError("--format onnx needs the onnx package: pip install onnx (or export --format torchscript)")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET)


WRITERS = {"safetensors": _write_safetensors, "onnx": _write_onnx, "torchscript": _write_torchscript}


def sample_images(arm: ArmModel) -> tuple[np.ndarray, np.ndarray]:
    """(dataset indices, stored-form images) of the experiment's sample test images; two seeded noise
    images (index -1) stand in where the experiment kept none."""
    from ferbench.harness.data.samples import load_samples

    samples = load_samples(experiment_paths(arm.experiment_dir)["samples"])
    if samples is not None and len(samples["images"]):
        return samples["indices"], samples["images"]
    height, width = arm.preprocessing.image_size
    shape = (2, height, width) if arm.preprocessing.grayscale else (2, height, width, 3)
    return np.full(2, -1), np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _trial_difference(arm: ArmModel, indices: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Largest |difference| between ``probabilities`` (of the sample images) and the trial's own test
    predictions for the same images; None where the trial's test split holds none of them."""
    path = arm.trial_dir / TEST_PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        position = {int(index): row for row, index in enumerate(stored["indices"])}
        rows = [(i, position[int(index)]) for i, index in enumerate(indices) if int(index) in position]
        if not rows:
            return None
        ours, theirs = zip(*rows)
        return float(np.abs(probabilities[list(ours)] - stored["probabilities"][list(theirs)]).max())


def _check(folder: Path, config: dict, arm: ArmModel) -> dict:
    """Run the written model as ``ferbench predict`` would and compare it with the PyTorch model."""
    from ferbench.harness.export.predict import load_exported

    indices, images = sample_images(arm)
    batch = model_input(images, arm.preprocessing)
    exported = load_exported(folder, config)
    with torch.no_grad():
        reference = exported.task.probabilities(arm.model(batch).float()).numpy()
    difference = float(np.abs(exported.probabilities(batch) - reference).max())
    if not difference <= MAX_DIFFERENCE:
        raise ExportError(f"{folder / FORMATS[config['format']]}: the {config['format']} model's probabilities differ from "
                          f"the PyTorch model's by {difference:.2g} on {len(images)} sample images; export another format")
    return {"images": len(images), "source": "sample test images (ferbench/samples.npz)" if (indices >= 0).all() else "seeded noise images",
            "max_abs_difference_vs_pytorch": difference,
            "max_abs_difference_vs_trial_test_predictions": _trial_difference(arm, indices, reference)}


def _output_description(arm: ArmModel) -> dict:
    """What the outputs are; a multi-label model also carries the thresholds its test scores used."""
    if arm.spec.task == "multilabel":
        return {"output": "logits (batch x labels, in class_names order); probabilities = a sigmoid per label; a label "
                          "is present at a probability at or above its threshold",
                "thresholds": arm.thresholds}
    return {"output": "logits (batch x classes, in class_names order); probabilities = softmax over the classes"}


def build_config(arm: ArmModel, fmt: str) -> dict:
    """config.json: what the model is, where it came from, and how to feed it."""
    import ferbench

    spec, arm_row = arm.spec, arm.arm
    experiment = arm.experiment_dir
    return {
        "ferbench_version": ferbench.__version__,
        "format": fmt,
        "weights_file": FORMATS[fmt],
        "exported": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "backbone": arm_row["backbone"],
        "head": spec.train.head,
        "model_options": spec.model.model_dump(mode="json"),
        "task": spec.task,
        "class_names": list(arm.class_names),
        **_output_description(arm),
        **arm.preprocessing.to_config(),
        "source": {
            "experiment": experiment.name, "experiment_path": str(experiment), "study": spec.study,
            "arm_id": arm.arm_id, "trial": arm.trial_dir.name,
            **{key: arm_row[key] for key in ("backbone", "init", "variant", "seed", "fold", "settings") if arm_row.get(key) is not None},
        },
        "checkpoint": arm.selection(),
        "test_scores": {key: arm.result[key] for key in ("test_acc", "test_macro_f1", "test_weighted_f1", "test_loss")
                        if key in arm.result},
    }


def _check_replaceable(folder: Path) -> None:
    """Only an earlier export (or nothing) may be replaced: a mistyped --out must never empty a user's folder."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ExportError(f"{folder}: exists and is a file; choose another --out")
    if any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise ExportError(f"{folder}: exists and is not a FERBench export (no {CONFIG_FILE}); choose another --out or empty it")


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished ``staging`` folder to ``folder``; an earlier export there is replaced whole."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
    os.rename(folder, old / folder.name)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def export_arm(experiment_dir: str | Path, arm_id: str, fmt: str, out: str | Path | None = None) -> ExportResult:
    """Write the completed arm ``arm_id`` as ``fmt`` with its config.json into ``out`` (default
    ``<experiment>/export/<arm_id>/``): built in a hidden folder beside it, checked, then renamed into
    place, so a reader sees the earlier export or the new one, never a mixture."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    arm = load_arm(experiment_dir, arm_id)
    folder = Path(out).expanduser().resolve() if out else default_folder(arm.experiment_dir, arm_id)
    _check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        _, images = sample_images(arm)
        WRITERS[fmt](arm.model, model_input(images, arm.preprocessing), staging / FORMATS[fmt])
        config = build_config(arm, fmt)
        config["check"] = _check(staging, config, arm)
        atomic_write_json(staging / CONFIG_FILE, config)
        _fsync_files(staging)
        _move_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(folder, config)
