"""``ferbench export EXPERIMENT [ARM] --format safetensors|onnx|torchscript [--out DIR]`` and
``ferbench predict MODEL_DIR IMAGE... [--face-detect] [--json]``: take the chosen model away and use it.

Without ARM, export takes the report's recommendation (its best model by test accuracy, and that
model's arm with the highest test accuracy). That choice lives in the report layer, which only the
CLI's ``main`` may import, so ``main`` hands it in as ``recommend``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_USAGE = 0, 2


def _fail(message: str) -> int:
    print(f"ferbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ferbench.harness.export.formats import FORMATS

    export = subparsers.add_parser("export", help="write an arm's tested model as safetensors, ONNX or TorchScript with its config.json")
    export.add_argument("experiment_dir", metavar="EXPERIMENT", help="an experiment folder (what `ferbench run` printed)")
    export.add_argument("arm", nargs="?", metavar="ARM",
                        help="arm id, e.g. small_cnn_random_baseline_s0 (default: the report's recommendation, the best "
                             "model by test accuracy, and of its arms the one with the highest test accuracy)")
    export.add_argument("--format", required=True, choices=list(FORMATS), help="weights format: " + ", ".join(
        f"{name} ({file})" for name, file in FORMATS.items()))
    export.add_argument("--out", metavar="DIR", help="folder to write (default: EXPERIMENT/export/ARM/; an earlier export "
                                                     "there is replaced)")
    return export


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    predict = subparsers.add_parser("predict", help="classify image files with a model written by `ferbench export`")
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by `ferbench export`")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or BMP files, grayscale or colour")
    predict.add_argument("--face-detect", action="store_true",
                         help="crop the largest face first (OpenCV, as data.face_detect does); for raw photographs")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    return predict


def cmd_export(args: argparse.Namespace, recommend: Callable[[Path], str] | None = None) -> int:
    """``recommend(experiment_dir) -> arm id`` names the default arm (``ferbench.reports.recommended_arm``)."""
    from ferbench.harness.export.arm import ExportError, read_grid
    from ferbench.harness.export.writer import export_arm

    experiment = Path(args.experiment_dir).expanduser().resolve()
    arm_id, why = args.arm, ""
    try:
        if arm_id is None:
            read_grid(experiment)  # a folder that is no experiment gets its own message, not the report's
            if recommend is None:
                return _fail(f"name the arm to export: ferbench export {experiment} ARM")
            arm_id = recommend(experiment)
            why = " (the report's recommendation: best model by test accuracy, its best arm)"
        result = export_arm(experiment, arm_id, args.format, args.out)
    except (ExportError, ValueError, FileNotFoundError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except OSError as err:  # a destination that cannot be written
        return _fail(f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}")
    config, folder = result.config, result.folder
    checkpoint, check, scores = config["checkpoint"], config["check"], config["test_scores"]
    epoch = f", epoch {checkpoint['selected_epoch']}" if checkpoint.get("selected_epoch") is not None else ""
    metric = f" by {checkpoint['select_metric']}" if "select_metric" in checkpoint else ""
    round_text = f", round {checkpoint['selected_round']}" if "selected_round" in checkpoint else ""
    print(f"Exported {arm_id}{why} as {config['format']}: {folder}")
    print(f"  files: {config['weights_file']}, config.json")
    print(f"  weights: {checkpoint['weights_from']} (train.select={checkpoint['select']}{metric}{epoch}{round_text})"
          + (f"; test acc {scores['test_acc']:.3f}" if "test_acc" in scores else ""))
    trial = check["max_abs_difference_vs_trial_test_predictions"]
    print(f"  check: on {check['images']} {check['source']} its probabilities are within "
          f"{check['max_abs_difference_vs_pytorch']:.1e} of the PyTorch model's"
          + (f"; the PyTorch model's are within {trial:.1e} of the trial's own test predictions" if trial is not None else ""))
    print(f"  input: {' x '.join(['N', str(config['input']['channels']), str(config['input']['size']), str(config['input']['size'])])} "
          f"float32, {config['input']['channel_handling']}, mean {config['input']['mean']}, std {config['input']['std']}")
    print(f"Use it: ferbench predict {folder} IMAGE...")
    return EXIT_OK


def _table(predictions: list, class_names: tuple[str, ...]) -> str:
    """One row per image: the file, the predicted class, each class's probability (4 decimals)."""
    header = ["image", "predicted", *class_names]
    rows = [[p.image, p.predicted, *(f"{p.probabilities[name]:.4f}" for name in class_names)] for p in predictions]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
                     for row in [header, *rows])


def cmd_predict(args: argparse.Namespace) -> int:
    from ferbench.harness.export.arm import ExportError
    from ferbench.harness.export.predict import load_exported
    from ferbench.harness.export.preprocess import ImageError

    try:
        model = load_exported(args.model_dir)
        predictions = model.predict(args.images, face_detect=args.face_detect)
    except (ExportError, ImageError) as err:
        return _fail(str(err))
    except RuntimeError as err:  # --face-detect without the Haar cascade files: the message names them
        return _fail(str(err).splitlines()[0])
    if args.json:
        print(json.dumps({"model": str(Path(args.model_dir).resolve()), "class_names": list(model.class_names),
                          "predictions": [{"image": p.image, "predicted": p.predicted, "probabilities": p.probabilities}
                                          for p in predictions]}, indent=2))
    else:
        print(_table(predictions, model.class_names))
    return EXIT_OK
