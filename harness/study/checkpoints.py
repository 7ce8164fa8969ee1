"""A trial's checkpoints on disk: written sealed, read only when intact.

Why a seal: Ray copies a checkpoint's files one by one into ``checkpoint_NNNNNN/``; a full disk or
a killed process leaves some of them missing, empty or cut. Each checkpoint therefore carries
``seal.json`` with every other file's size and SHA-256, written last into the folder Ray copies.
A checkpoint is intact when its seal is there and every file it lists matches; readers take the
newest intact one and never mistake a cut checkpoint for a good one. Checkpoints of earlier versions
(no seal) count as intact when their files parse.

No Ray, and torch only where a checkpoint's weights are read: the report reads checkpoints too.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

from ferbench.harness.study.layout import CHECKPOINT_DIR, CHECKPOINT_FILE, FINAL_MARKER, HISTORY_FILE, SEAL_FILE, TRIAL_FAILED  # noqa: F401


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint_files(folder: Path, state_bytes: bytes, history: list[dict]) -> None:
    """Write the weights, the history and, last, the seal naming both into ``folder``."""
    files = {CHECKPOINT_FILE: state_bytes, HISTORY_FILE: json.dumps(history).encode()}
    for name, data in files.items():
        (Path(folder) / name).write_bytes(data)
    seal = {name: {"size": len(data), "sha256": _sha256(data)} for name, data in files.items()}
    (Path(folder) / SEAL_FILE).write_text(json.dumps(seal))


def _sealed_bytes(folder: Path, name: str) -> bytes | None:
    """``name``'s bytes if the seal vouches for them (or, with no seal, if the file exists); else None."""
    try:
        data = (folder / name).read_bytes()
    except OSError:
        return None
    seal_path = folder / SEAL_FILE
    if not seal_path.exists():  # an earlier version's checkpoint: the caller's parse decides
        return data
    try:
        entry = json.loads(seal_path.read_text())[name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if len(data) == entry["size"] and _sha256(data) == entry["sha256"] else None


def read_history(checkpoint_dir: Path) -> list[dict] | None:
    """The checkpoint's metric history, or ``None`` when the checkpoint is cut or damaged."""
    data = _sealed_bytes(Path(checkpoint_dir), HISTORY_FILE)
    try:
        history = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return history if isinstance(history, list) and history and all(isinstance(row, dict) for row in history) else None


def read_checkpoint(checkpoint_dir: Path) -> tuple[dict, list[dict]] | None:
    """(training state, history) of an intact checkpoint, or ``None``. The state is loaded with
    ``weights_only``: a checkpoint file never runs code."""
    import io

    import torch

    history = read_history(checkpoint_dir)
    data = _sealed_bytes(Path(checkpoint_dir), CHECKPOINT_FILE) if history is not None else None
    if data is None:
        return None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many types for a cut or foreign file; any means "not intact"
        return None
    return (state, history) if isinstance(state, dict) else None


def checkpoint_dirs(trial_dir: Path) -> list[Path]:
    """The trial's checkpoint folders, newest first."""
    try:
        folders = [p for p in Path(trial_dir).iterdir() if CHECKPOINT_DIR.match(p.name) and p.is_dir()]
    except OSError:
        return []
    return sorted(folders, key=lambda p: int(CHECKPOINT_DIR.match(p.name).group(1)), reverse=True)


def newest_history(trial_dir: Path) -> list[dict]:
    """History of the trial's newest intact checkpoint; ``[]`` when it has none."""
    for folder in checkpoint_dirs(trial_dir):
        history = read_history(folder)
        if history is not None:
            return history
    return []


def is_final(history: list[dict[str, Any]]) -> bool:
    """Whether a history ends its trial, finished or stopped for good: it is never trained again."""
    return bool(history) and (FINAL_MARKER in history[-1] or TRIAL_FAILED in history[-1])



def _reached_epoch(trial_dir: Path) -> int:
    epochs = [row.get("epoch") for row in newest_history(trial_dir)]
    return int(max((e for e in epochs if isinstance(e, (int, float))), default=-1))


def trial_folder(experiment_dir: Path, arm_id: str, arm_ids: list[str]) -> Path | None:
    """The arm's Tune folder ``<arm_id>_<trial id>`` (with ``params.json``). After ``--resume`` an arm
    has two, the newer continuing from the older's checkpoint: the one whose intact checkpoints reach
    the furthest epoch is the arm's, then the newest. A folder of a longer arm id that starts with
    ``<arm_id>_`` (a backbone ``timm:x`` beside ``timm:x_random_baseline_s0_y``) is not this arm's;
    ``arm_ids`` is every arm of the grid."""
    longer = [f"{other}_" for other in arm_ids if other.startswith(f"{arm_id}_")]
    candidates = [p for p in Path(experiment_dir).glob(f"{glob.escape(arm_id)}_*")
                  if (p / "params.json").is_file() and not any(p.name.startswith(prefix) for prefix in longer)]
    return max(candidates, key=lambda p: (_reached_epoch(p), p.stat().st_mtime), default=None)


def trial_statuses(experiment_dir: Path, arms: list[dict]) -> dict[str, str]:
    """arm_id → completed | failed | unavailable | incomplete, from the grid's ``arms`` and each trial's
    sealed checkpoints (a trial stopped for good by a NaN loss, or by Tune after its retries, failed)."""
    arm_ids, statuses = [arm["arm_id"] for arm in arms], {}
    for arm in arms:
        folder = None if arm.get("status") == "unavailable" else trial_folder(experiment_dir, arm["arm_id"], arm_ids)
        history = newest_history(folder) if folder is not None else []
        if arm.get("status") == "unavailable":
            statuses[arm["arm_id"]] = "unavailable"
        elif is_final(history):
            statuses[arm["arm_id"]] = "failed" if TRIAL_FAILED in history[-1] else "completed"
        else:
            statuses[arm["arm_id"]] = "failed" if folder is not None and (folder / "error.txt").is_file() else "incomplete"
    return statuses
