"""Read an experiment folder into tidy tables, with no Ray cluster needed.

Every grid arm appears, whatever happened to it: ``completed``, ``failed`` (with its error),
``unavailable`` (found in preflight, e.g. weights missing offline) or ``incomplete``
(interrupted; ``--resume`` finishes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.experiment import experiment_paths, read_json
from harness.trainable import HISTORY_FILE, TEST_PER_CLASS_FILE

ARM_COLUMNS = ["trial_id", "arm_id", "backbone", "init", "variant", "seed"]
# round / round_epoch place a row in a pseudo-labelling round (0: the teacher, and every other arm).
ROUND_COLUMNS = ["round", "round_epoch", "train_size"]
EPOCH_METRICS = ["train_acc", "train_loss", "val_acc", "val_loss", "lr", "epoch_time_s", "train_images_per_s", "epoch_wall_s"]
INTEGER_COLUMNS = {"seed", "fold", "epochs_done", "pl_rounds", "input_size", "params_total", "params_trainable", "best_epoch",
                   "selected_epoch", "pl_selected_round", "pl_last_round",
                   "backbone_params", "backbone_keras_params", "infer_batch_size"}
TEST_METRICS = ["test_acc", "test_loss", "test_macro_f1", "test_weighted_f1", "test_balanced_acc"]
# Measured once after the test evaluation (see harness.inference_speed, backbones.registry).
FINAL_MEASURES = ["infer_latency_ms", "infer_images_per_s", "infer_batch_size", "backbone_params", "backbone_keras_params"]
PSEUDO_LABEL_SUMMARY = ["pl_rounds", "pl_stop_reason"]  # student rounds trained, and why no further round ran
# A pseudo_label arm's test metrics are its selected round's (best val macro F1); the last round's are kept beside.
PSEUDO_LABEL_ROUNDS = ["pl_selected_round", "pl_last_round", "last_round_test_acc", "last_round_test_macro_f1"]


def _trial_dir(experiment_dir: Path, arm_id: str) -> Path | None:
    candidates = [p for p in experiment_dir.glob(f"{arm_id}_*") if (p / "params.json").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or a line cut by a crash mid-write
            continue
    return rows


def _checkpoint_history(trial_dir: Path) -> list[dict]:
    """The metric history stored in the trial's newest checkpoint (see harness.trainable)."""
    checkpoints = sorted(trial_dir.glob(f"checkpoint_*/{HISTORY_FILE}"))
    return json.loads(checkpoints[-1].read_text()) if checkpoints else []


def read_epochs(trial_dir: Path) -> pd.DataFrame:
    """One row per epoch: Tune's result.json merged with the checkpoint's own history (which
    survives a crash right after a report); a restored trial may replay an epoch, the last wins."""
    frame = pd.DataFrame(_checkpoint_history(trial_dir) + _json_lines(trial_dir / "result.json"))
    if frame.empty or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    if "round" not in frame:  # experiments of earlier versions: a single round
        frame["round"] = 0
    frame["round"] = frame["round"].fillna(0).astype(int)
    frame["round_epoch"] = frame["round_epoch"].fillna(frame["epoch"]) if "round_epoch" in frame else frame["epoch"]
    return frame


def _error_text(trial_dir: Path) -> str:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return ""
    lines = [line for line in error_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _arm_status(epochs: pd.DataFrame, trial_dir: Path | None, total_epochs: int) -> tuple[str, str]:
    if trial_dir is None:
        return "incomplete", ""
    if "trial_finished" in epochs:  # a pseudo_label trial has test metrics after every round
        finished = bool(epochs["trial_finished"].eq(True).any())
    else:  # experiments of earlier versions
        finished = not epochs.empty and epochs["epoch"].max() >= total_epochs and "test_acc" in epochs
        finished = finished and pd.notna(epochs["test_acc"].iloc[-1])
    if finished:
        return "completed", ""
    error = _error_text(trial_dir)
    return ("failed", error) if error else ("incomplete", "")


def collect(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(epochs, trials) tables as specified in DESIGN.md."""
    experiment_dir = Path(experiment_dir)
    paths = experiment_paths(experiment_dir)
    total_epochs = read_json(paths["manifest"])["spec"]["train"]["epochs"]
    epoch_frames, trial_rows = [], []
    arms = read_json(paths["grid"])
    arm_columns = ARM_COLUMNS + (["fold"] if any("fold" in arm for arm in arms) else [])  # k-fold studies
    for arm in arms:
        arm_fields = {k: arm[k] for k in arm_columns[1:]}
        source = {"weights_source": arm.get("weights_source", "")}
        if arm["status"] == "unavailable":
            trial_rows.append({"trial_id": "", **arm_fields, **source, "status": "unavailable", "error": arm["reason"]})
            continue
        trial_dir = _trial_dir(experiment_dir, arm["arm_id"])
        epochs = read_epochs(trial_dir) if trial_dir else pd.DataFrame(columns=["epoch"])
        status, error = _arm_status(epochs, trial_dir, total_epochs)
        trial_id = trial_dir.name[len(arm["arm_id"]) + 1:] if trial_dir else ""
        if not epochs.empty:
            frame = epochs.reindex(columns=["epoch", *ROUND_COLUMNS, *EPOCH_METRICS]).assign(trial_id=trial_id, **arm_fields)
            epoch_frames.append(frame[arm_columns + ["epoch", *ROUND_COLUMNS, *EPOCH_METRICS]])
        trial_rows.append(
            {"trial_id": trial_id, **arm_fields, **source, "status": status, "error": error, **_trial_summary(epochs)}
        )
    trials_table = pd.DataFrame(trial_rows)
    for column in INTEGER_COLUMNS.intersection(trials_table.columns):
        trials_table[column] = trials_table[column].astype("Int64")  # stays integer beside missing values
    epochs_table = (
        pd.concat(epoch_frames, ignore_index=True) if epoch_frames else pd.DataFrame(columns=arm_columns + ["epoch", *ROUND_COLUMNS, *EPOCH_METRICS])
    )
    return epochs_table, trials_table


def _trial_summary(epochs: pd.DataFrame) -> dict:
    if epochs.empty:
        return {"epochs_done": 0}
    trained = epochs[epochs["epoch"] > 0]
    last = epochs.iloc[-1]
    best = epochs.loc[epochs["val_acc"].idxmax()]
    summary = {
        "epochs_done": int(epochs["epoch"].max()),
        "input_size": last.get("input_size"),
        "params_total": last.get("params_total"),
        "params_trainable": last.get("params_trainable"),
        "final_train_acc": last["train_acc"],
        "final_train_loss": last["train_loss"],
        "final_val_acc": last["val_acc"],
        "final_val_loss": last["val_loss"],
        "best_val_acc": best["val_acc"],
        "best_epoch": int(best["epoch"]),
        "train_images_per_s": float(np.nanmean(trained["train_images_per_s"])) if len(trained) else np.nan,
        "train_time_s": float(trained["epoch_time_s"].sum()) if len(trained) else 0.0,
        "wall_time_s": float(epochs["epoch_wall_s"].sum()) if "epoch_wall_s" in epochs else np.nan,
        "resumed_at_epochs": " ".join(str(int(e)) for e in sorted(set(epochs.get("attempt_start_epoch", pd.Series(dtype=float)).dropna())) if e > 0),
    }
    summary.update({name: last.get(name, np.nan) for name in TEST_METRICS + FINAL_MEASURES})
    if "selected_epoch" in epochs:  # the round epoch whose weights were tested (train.select)
        summary["selected_epoch"] = last.get("selected_epoch")
    if "pl_rounds" in epochs:
        summary.update({name: last.get(name) for name in PSEUDO_LABEL_SUMMARY + PSEUDO_LABEL_ROUNDS})
    return summary


def collect_per_class(experiment_dir: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(per_class, confusion): one row per arm × class of the test split (precision, recall, F1,
    support), and each arm's confusion matrix (rows true, columns predicted) with its class names."""
    experiment_dir = Path(experiment_dir)
    rows, confusion = [], {}
    arms = read_json(experiment_paths(experiment_dir)["grid"])
    for arm in arms:
        trial_dir = _trial_dir(experiment_dir, arm["arm_id"]) if arm["status"] != "unavailable" else None
        path = trial_dir / TEST_PER_CLASS_FILE if trial_dir else None
        if path is None or not path.is_file():
            continue
        scores = read_json(path)
        fields = {k: arm[k] for k in ARM_COLUMNS[1:] + (["fold"] if "fold" in arm else [])}
        for i, name in enumerate(scores["class_names"]):
            rows.append({**fields, "class": name, **{k: scores[k][i] for k in ("precision", "recall", "f1", "support")}})
        confusion[arm["arm_id"]] = {"class_names": scores["class_names"], "matrix": scores["confusion_matrix"]}
    columns = ARM_COLUMNS[1:] + ["class", "precision", "recall", "f1", "support"]
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)), confusion


def trial_statuses(experiment_dir: Path) -> dict[str, str]:
    _, trials = collect(experiment_dir)
    return dict(zip(trials["arm_id"], trials["status"]))
