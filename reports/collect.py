"""Read an experiment folder into tidy tables, with no Ray cluster needed.

Every grid arm appears, whatever happened to it: ``completed``, ``failed`` (with its error),
``unavailable`` (found in preflight, e.g. weights missing offline) or ``incomplete``
(interrupted; ``--resume`` finishes it).

Nothing lost, nothing fatal: a trial file that cannot be read (cut by a full disk, truncated, not
the format it claims) leaves that one arm's part out and names the file in the arm's ``damaged``
column (relative to the experiment folder), so one bad file never takes the whole report down. Only
``ferbench/manifest.json`` and ``ferbench/grid.json`` are essential: without them there is no report,
and the error names the file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ferbench.harness.study.checkpoints import HISTORY_FILE, TRIAL_FAILED, checkpoint_dirs, newest_history, trial_folder
from ferbench.harness.study.layout import CROSS_DATASET_FILE, ROUNDS_FILE, TEST_PER_CLASS_FILE, TEST_PREDICTIONS_FILE, TREE_NODES_FILE, experiment_paths
from ferbench.reports.spec_view import StoredSpec, stored_spec

T = TypeVar("T")
# What reading a damaged file raises: bad JSON or bad contents (ValueError, JSONDecodeError, UnicodeDecodeError,
# np.load refusing a pickle), an unreadable or cut file (OSError, EOFError, zip and zlib errors), a missing array.
READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
PER_CLASS_KEYS = ("precision", "recall", "f1", "support")
ARM_COLUMNS = ["trial_id", "arm_id", "backbone", "init", "variant", "seed"]
# round / round_epoch place a row in a pseudo-labelling round (0: the teacher, and every other arm).
ROUND_COLUMNS = ["round", "round_epoch", "train_size"]
EPOCH_METRICS = ["train_acc", "train_loss", "val_acc", "val_loss", "lr", "epoch_time_s", "train_images_per_s", "epoch_wall_s"]
INTEGER_COLUMNS = {"seed", "fold", "epochs_done", "pl_rounds", "input_size", "params_total", "params_trainable", "best_epoch",
                   "selected_epoch", "pl_selected_round", "pl_last_round",
                   "backbone_params", "backbone_keras_params", "infer_batch_size"}
TEST_METRICS = ["test_acc", "test_loss", "test_macro_f1", "test_weighted_f1", "test_balanced_acc"]
# Measured once after the test evaluation (see ferbench.harness.train.inference_speed, ferbench.backbones.registry).
FINAL_MEASURES = ["infer_latency_ms", "infer_images_per_s", "infer_batch_size", "backbone_params", "backbone_keras_params"]
# A tree:<name> arm's rows: each node's epochs (``node``: its name), then one row testing the whole tree (``node``: tree).
NODE_COLUMNS = ["node", "node_test_acc", "node_test_macro_f1"]
TREE_ROW = "tree"
PSEUDO_LABEL_SUMMARY = ["pl_rounds", "pl_stop_reason"]  # student rounds trained, and why no further round ran
# A pseudo_label arm's test metrics are its selected round's (best val macro F1); the last round's are kept beside.
PSEUDO_LABEL_ROUNDS = ["pl_selected_round", "pl_last_round", "last_round_test_acc", "last_round_test_macro_f1"]


# --------------------------------------------------------------------------- reading one file


def relative(path: Path, experiment_dir: Path) -> str:
    """``path`` as the report names it: relative to the experiment folder, with ``/``."""
    try:
        return Path(path).relative_to(experiment_dir).as_posix()
    except ValueError:
        return str(path)


def try_read(path: Path, reader: Callable[[Path], T]) -> tuple[T | None, str]:
    """(``reader(path)``, "") or (None, why not): the one place that decides what a damaged file is."""
    try:
        return reader(Path(path)), ""
    except KeyError as err:
        return None, f"missing {err}"
    except READ_ERRORS as err:
        return None, str(err) or type(err).__name__


def _field(mapping: Any, key: str) -> Any:
    if not isinstance(mapping, dict):
        raise ValueError(f"expected a JSON object holding {key!r}")
    return mapping[key]


def _numbers(values: Any, n: int, what: str) -> list:
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{what}: expected {n} numbers")
    return values


def _class_scores(scores: Any, n: int, what: str) -> None:
    for key in PER_CLASS_KEYS:
        _numbers(_field(scores, key), n, f"{what}{key}")


def _matrix(matrix: Any, n: int, what: str) -> None:
    if not isinstance(matrix, list) or len(matrix) != n:
        raise ValueError(f"{what}: expected {n} rows")
    for row in matrix:
        _numbers(row, n, what)


def _class_names(stored: Any) -> list[str]:
    names = _field(stored, "class_names")
    if not isinstance(names, list) or not names:
        raise ValueError("class_names: expected a list of names")
    return names


def read_per_class(path: Path) -> dict:
    """``test_per_class.json``, checked: per class precision / recall / F1 / support, and a square confusion
    matrix; a multi-label task's file (it has a ``threshold_rule``) has per label thresholds and average
    precisions instead of the matrix, since its labels are not exclusive."""
    scores = json.loads(Path(path).read_text())
    n = len(_class_names(scores))
    _class_scores(scores, n, "")
    if "threshold_rule" in scores:
        _label_thresholds(scores, n)
    else:
        _matrix(_field(scores, "confusion_matrix"), n, "confusion_matrix")
    return scores


def _label_thresholds(scores: dict, n: int) -> None:
    """A multi-label file's own fields; an average precision is null (or NaN) for a label without test positives."""
    if not isinstance(scores["threshold_rule"], str):
        raise ValueError("threshold_rule: expected a name")
    _numbers(_field(scores, "threshold"), n, "threshold")
    precisions = _field(scores, "average_precision")
    _numbers([0.0 if v is None else v for v in precisions] if isinstance(precisions, list) else precisions, n,
             "average_precision")


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """``test_predictions.npz``'s test indices and probabilities (never unpickled), one row per index."""
    stored = np.load(path, allow_pickle=False)
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with stored:
        arrays = {name: stored[name] for name in ("indices", "probabilities")}
    if arrays["probabilities"].ndim != 2 or len(arrays["indices"]) != len(arrays["probabilities"]):
        raise ValueError("indices and probabilities do not match")
    return arrays


def read_rounds(path: Path) -> dict:
    """``pseudo_label_rounds.json``, checked for every field the report's pseudo-labelling section reads."""
    stored = json.loads(Path(path).read_text())
    n = len(_class_names(stored))
    for key in ("pool_size", "finished", "stop_reason"):
        _field(stored, key)
    _field(_field(stored, "settings"), "threshold")
    rounds = _field(stored, "rounds")
    if not isinstance(rounds, list):
        raise ValueError("rounds: expected a list")
    for record in rounds:
        what = f"round {_field(record, 'round')} "
        for key in ("added_per_class", "pseudo_per_class", "pseudo_precision_per_class"):
            _numbers(_field(record, key), n, what + key)
        _class_scores(_field(record, "test_per_class"), n, what + "test_per_class ")
        _matrix(_field(record, "test_confusion_matrix"), n, what + "test_confusion_matrix")
    return stored


def read_tree_nodes(path: Path) -> dict:
    """A trial's ``tree_nodes.json``, checked for what the report reads (ValueError: a damaged file)."""
    record = json.loads(Path(path).read_text())
    for node in record["nodes"]:
        n = len(node["groups"])
        matrix = np.asarray(node["test"]["confusion_matrix"], dtype=float)
        if matrix.shape != (n, n) or not all(k in node for k in ("name", "backbone", "val_acc")):
            raise ValueError(f"node {node.get('name')!r}: its scores do not fit its {n} groups")
    return record



def list_of(value, n: int, what: str) -> list:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{what}: expected a list of {n}")
    return value


def number_fields(mapping: dict, keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        if isinstance(mapping[key], bool) or not isinstance(mapping[key], (int, float)):
            raise ValueError(f"{what}{key}: expected a number")


def read_cross_dataset(path: Path) -> dict:
    """A trial's ``cross_dataset.json``, checked: per extra test set its counts, scalars and per-class scores."""
    stored = json.loads(Path(path).read_text())
    try:
        n = len(stored["class_names"])
        for record in stored["datasets"]:
            what = f"{record['name']}: "
            number_fields(record, ("n_images", "n_dropped"), what)
            if record["n_images"]:
                number_fields(record["scalars"], ("acc", "macro_f1"), what)
                for key in ("precision", "recall", "f1", "support"):
                    list_of(record["per_class"][key], n, what + key)
                for row in list_of(record["per_class"]["confusion_matrix"], n, what + "confusion_matrix"):
                    list_of(row, n, what + "confusion_matrix")
    except TypeError as err:  # a list where an object belongs, or the other way round
        raise ValueError(str(err)) from None
    return stored


# The trial files the report reads besides its metric rows, each with the reader that checks it.
ARTIFACTS: dict[str, Callable[[Path], Any]] = {
    TEST_PER_CLASS_FILE: read_per_class, TEST_PREDICTIONS_FILE: read_predictions, ROUNDS_FILE: read_rounds,
    TREE_NODES_FILE: read_tree_nodes, CROSS_DATASET_FILE: read_cross_dataset,
}


def artifact_damage(trial_dir: Path) -> list[Path]:
    """The trial's artifacts (``ARTIFACTS``) that exist but cannot be read."""
    return [trial_dir / name for name, reader in ARTIFACTS.items()
            if (trial_dir / name).exists() and try_read(trial_dir / name, reader)[0] is None]


def _damaged(path: Path, reason: str) -> ValueError:
    """The one error of a damaged essential file (the CLI prints one line)."""
    return ValueError(f"{path}: damaged ({reason}); the report cannot be built without it: restore it from a "
                      "backup or the remote storage, or run the study again")


def _essential(path: Path, check: Callable[[Any], None]) -> Any:
    """A file without which there is no report: damaged, it is one error naming it (the CLI prints one line)."""
    try:
        value = json.loads(Path(path).read_text())
        check(value)
    except FileNotFoundError:
        raise
    except (KeyError, ValueError, OSError) as err:
        raise _damaged(path, f"missing {err}" if isinstance(err, KeyError) else str(err)) from None
    return value


def _check_manifest(manifest: Any) -> None:
    for key in ("study", "experiment", "created", "dataset", "versions", "hardware"):
        _field(manifest, key)
    for key in ("train", "split", "grid", "resources"):
        _field(_field(manifest, "spec"), key)
    _field(manifest["spec"]["train"], "epochs")


def _check_grid(grid: Any) -> None:
    if not isinstance(grid, list):
        raise ValueError("expected a JSON list of arms")
    for arm in grid:
        for key in ("arm_id", "status"):
            _field(arm, key)


def read_manifest(experiment_dir: Path) -> dict:
    """``ferbench/manifest.json``, checked for the fields every report reads."""
    return _essential(experiment_paths(experiment_dir)["manifest"], _check_manifest)


def read_spec(experiment_dir: Path, manifest: dict | None = None) -> StoredSpec:
    """The manifest's stored spec in the spec model, with the notes of reading it
    (``ferbench.reports.spec_view.stored_spec``: a spec of an earlier version still reads); a spec the
    report cannot use is a damaged manifest, one error naming it. ``manifest``: already read."""
    manifest = read_manifest(experiment_dir) if manifest is None else manifest
    try:
        return stored_spec(manifest)
    except ValueError as err:
        reason = " ".join(str(err).split())  # one line, naming the setting from the spec down
        reason = reason if reason.startswith("spec") else f"spec.{reason}"
        raise _damaged(experiment_paths(experiment_dir)["manifest"], reason) from None


def read_grid(experiment_dir: Path) -> list[dict]:
    """``ferbench/grid.json``: every arm of the grid, each with its id and preflight status."""
    return _essential(experiment_paths(experiment_dir)["grid"], _check_grid)


# --------------------------------------------------------------------------- a trial's folder and metric rows


def _checkpoint_history(trial_dir: Path) -> list[dict]:
    """The metric history of the trial's newest intact checkpoint ([] when none is). A checkpoint cut
    by a crash or a full disk (seal missing or not matching, ``history.json`` empty or truncated) is
    passed over: the one before it holds the history up to its own epoch."""
    return newest_history(trial_dir)


def _trial_dir(experiment_dir: Path, arm_id: str, arm_ids: list[str] | None = None) -> Path | None:
    """The arm's trial folder (``ferbench.harness.study.checkpoints.trial_folder``); ``arm_ids`` from ``grid.json`` when not given."""
    arm_ids = [arm["arm_id"] for arm in read_grid(experiment_dir)] if arm_ids is None else arm_ids
    return trial_folder(Path(experiment_dir), arm_id, arm_ids)


def _json_lines(path: Path) -> list[dict]:
    """Tune's ``result.json`` rows; a blank line or one cut by a crash mid-write is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_epochs(trial_dir: Path, damaged: list[Path] | None = None) -> pd.DataFrame:
    """One row per epoch: Tune's result.json merged with the checkpoint's own history (which
    survives a crash right after a report); a restored trial may replay an epoch, the last wins.
    Files that cannot be read are appended to ``damaged``."""
    damaged = [] if damaged is None else damaged
    history = _checkpoint_history(trial_dir)
    checkpoints = checkpoint_dirs(trial_dir)
    if not history and checkpoints:  # none intact: name the newest (an older intact one is normal after a crash)
        damaged.append(checkpoints[0] / HISTORY_FILE)
    rows, problem = try_read(trial_dir / "result.json", _json_lines)
    if problem:
        damaged.append(trial_dir / "result.json")
    frame = pd.DataFrame(history + (rows or []))
    if frame.empty or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    if "round" not in frame:  # experiments of earlier versions: a single round
        frame["round"] = 0
    frame["round"] = frame["round"].fillna(0).astype(int)
    frame["round_epoch"] = frame["round_epoch"].fillna(frame["epoch"]) if "round_epoch" in frame else frame["epoch"]
    return frame


def _error_text(trial_dir: Path, damaged: list[Path]) -> str:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return ""
    text, problem = try_read(error_file, lambda path: path.read_text(errors="replace"))
    if problem:
        damaged.append(error_file)
        return "unknown error (error.txt unreadable)"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _arm_status(epochs: pd.DataFrame, trial_dir: Path | None, total_epochs: int, damaged: list[Path]) -> tuple[str, str]:
    if trial_dir is None:
        return "incomplete", ""
    if "trial_finished" in epochs:  # a pseudo_label trial has test metrics after every round
        finished = bool(epochs["trial_finished"].eq(True).any())
    else:  # experiments of earlier versions
        finished = not epochs.empty and epochs["epoch"].max() >= total_epochs and "test_acc" in epochs
        finished = finished and pd.notna(epochs["test_acc"].iloc[-1])
    if finished:
        return "completed", ""
    if TRIAL_FAILED in epochs and epochs[TRIAL_FAILED].notna().any():  # stopped for good (a NaN loss), no error.txt
        return "failed", str(epochs[TRIAL_FAILED].dropna().iloc[-1])
    error = _error_text(trial_dir, damaged)
    return ("failed", error) if error else ("incomplete", "")


def arm_columns(arms: list[dict]) -> list[str]:
    """The tables' arm descriptor columns: ``ARM_COLUMNS``, ``fold`` in k-fold studies, and each extra grid axis
    under its dotted setting path (``train.lr``), so a table row says which settings its arm trained with."""
    axes = dict.fromkeys(path for arm in arms for path in arm.get("settings") or {})
    return ARM_COLUMNS + (["fold"] if any("fold" in arm for arm in arms) else []) + list(axes)


def arm_fields(arm: dict, columns: list[str]) -> dict:
    """An arm's descriptor values for ``columns`` (``arm_columns`` without ``trial_id``); a setting that is
    null reads ``none`` (as in the arm's id), so grouping by it never drops the arm."""
    settings = {k: "none" if v is None else v for k, v in (arm.get("settings") or {}).items()}
    return {k: settings[k] if k in settings else arm.get(k) for k in columns}


def collect(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(epochs, trials) tables as specified in DESIGN.md; ``trials.damaged`` names (``; ``-joined,
    relative to the experiment folder) the files of an arm that could not be read."""
    experiment_dir = Path(experiment_dir)
    total_epochs = read_spec(experiment_dir).spec.train.epochs
    epoch_frames, trial_rows = [], []
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    columns = arm_columns(arms)
    for arm in arms:
        fields = arm_fields(arm, columns[1:])
        source = {"weights_source": arm.get("weights_source", "")}
        if arm["status"] == "unavailable":
            trial_rows.append({"trial_id": "", **fields, **source, "status": "unavailable", "error": arm["reason"],
                               "damaged": ""})
            continue
        damaged: list[Path] = []
        trial_dir = _trial_dir(experiment_dir, arm["arm_id"], arm_ids)
        epochs = read_epochs(trial_dir, damaged) if trial_dir else pd.DataFrame(columns=["epoch"])
        status, error = _arm_status(epochs, trial_dir, total_epochs, damaged)
        if TRIAL_FAILED in epochs:  # the row that says why a trial stopped holds no metrics
            epochs = epochs[epochs[TRIAL_FAILED].isna()].reset_index(drop=True)
        damaged += artifact_damage(trial_dir) if trial_dir else []
        trial_id = trial_dir.name[len(arm["arm_id"]) + 1:] if trial_dir else ""
        if not epochs.empty:
            metrics = ["epoch", *ROUND_COLUMNS, *EPOCH_METRICS, *task_columns(epochs, "val_", EPOCH_METRICS),
                       *(NODE_COLUMNS if "node" in epochs else [])]
            frame = epochs.reindex(columns=metrics).assign(trial_id=trial_id, **fields)
            epoch_frames.append(frame[columns + metrics])
        trial_rows.append({"trial_id": trial_id, **fields, **source, "status": status, "error": error,
                           "damaged": "; ".join(relative(p, experiment_dir) for p in damaged), **_trial_summary(epochs)})
    trials_table = pd.DataFrame(trial_rows)
    for column in INTEGER_COLUMNS.intersection(trials_table.columns):
        trials_table[column] = trials_table[column].astype("Int64")  # stays integer beside missing values
    epochs_table = (
        pd.concat(epoch_frames, ignore_index=True) if epoch_frames else pd.DataFrame(columns=columns + ["epoch", *ROUND_COLUMNS, *EPOCH_METRICS])
    )
    return epochs_table, trials_table


def network_rows(epochs: pd.DataFrame) -> pd.DataFrame:
    """The rows of arms that train one network: a tree's rows are its nodes' networks (shown in the report's tree
    section), so curves, MCR/MOFR and initial metrics, which follow one network through its epochs, leave them out."""
    if "node" not in epochs:
        return epochs
    return epochs[epochs["node"].isna()].reset_index(drop=True)


def task_columns(epochs: pd.DataFrame, prefix: str, known: list[str]) -> list[str]:
    """The metrics a task reports beyond the common ones (multilabel: ``val_f1_macro``, ``test_micro_f1``, …)."""
    return [name for name in epochs.columns if name.startswith(prefix) and name not in known]


def _trial_summary(epochs: pd.DataFrame) -> dict:
    if epochs.empty:
        return {"epochs_done": 0}
    trained = epochs[epochs["epoch"] > 0]
    last = epochs.iloc[-1]
    # a tree's one validation accuracy is its routed one (the node rows measure other networks on other classes)
    scored = epochs[epochs["node"] == TREE_ROW] if "node" in epochs and epochs["node"].notna().any() else epochs
    best = scored.loc[scored["val_acc"].idxmax()] if scored["val_acc"].notna().any() else last
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
    summary.update({name: last.get(name) for name in task_columns(epochs, "test_", TEST_METRICS)})
    summary.update({name: last.get(name) for name in task_columns(epochs, "cross_", [])})  # eval.datasets' scores
    if "selected_epoch" in epochs:  # the round epoch whose weights were tested (train.select)
        summary["selected_epoch"] = last.get("selected_epoch")
    if "pl_rounds" in epochs:
        summary.update({name: last.get(name) for name in PSEUDO_LABEL_SUMMARY + PSEUDO_LABEL_ROUNDS})
    return summary


def collect_per_class(experiment_dir: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(per_class, confusion): one row per arm × class of the test split (precision, recall, F1,
    support), and each arm's confusion matrix (rows true, columns predicted) with its class names.
    A damaged ``test_per_class.json`` leaves its arm out."""
    rows, confusion = [], {}
    columns, found = arm_artifacts(experiment_dir, TEST_PER_CLASS_FILE, read_per_class)
    for fields, scores in found:
        for i, name in enumerate(scores["class_names"]):
            rows.append({**fields, "class": name, **{k: scores[k][i] for k in ("precision", "recall", "f1", "support")}})
        if "confusion_matrix" in scores:  # a multi-label task's labels have none
            confusion[fields["arm_id"]] = {"class_names": scores["class_names"], "matrix": scores["confusion_matrix"]}
    columns += ["class", "precision", "recall", "f1", "support"]
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)), confusion


def arm_artifacts(experiment_dir: Path, file_name: str, reader: Callable[[Path], T]) -> tuple[list[str], list[tuple[dict, T]]]:
    """(the tables' arm descriptor columns, ``arm_columns`` without ``trial_id``; per arm whose trial folder holds a
    readable ``file_name``, in grid order: (its descriptor values, ``reader``'s reading)): what a task's report part
    tabulates. A file not written yet, or damaged (``collect``'s ``damaged`` names it), leaves its arm out."""
    experiment_dir = Path(experiment_dir)
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    columns = arm_columns(arms)[1:]
    found = []
    for arm in arms:
        trial_dir = _trial_dir(experiment_dir, arm["arm_id"], arm_ids) if arm["status"] != "unavailable" else None
        path = trial_dir / file_name if trial_dir else None
        value = try_read(path, reader)[0] if path is not None and path.is_file() else None
        if value is not None:
            found.append((arm_fields(arm, columns), value))
    return columns, found


def trial_statuses(experiment_dir: Path) -> dict[str, str]:
    _, trials = collect(experiment_dir)
    return dict(zip(trials["arm_id"], trials["status"]))
