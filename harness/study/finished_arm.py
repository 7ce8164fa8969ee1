"""An arm of a finished experiment, read from the folder alone: its grid row, whether it completed, the spec its
trial read, and the weights its test scores are of.

Which weights: ``selected_weights.pt`` where the trial wrote one (``train.select=best_val``, whose best epoch may
be in no kept checkpoint, and pseudo-labelling arms, whose chosen round may not be the last;
``ferbench.harness.train.test_artifacts``), else the newest intact checkpoint, which holds the last epoch's
weights: those ``train.select=last`` tests.

Why in the study room: two users read a finished arm, ``ferbench export`` (``ferbench.harness.export.arm``) and a
study whose arms start from it (``ferbench.harness.study.transfer``, run by preflight); both sit above this module,
which needs nothing but the experiment folder's layout and its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ferbench.harness.spec import StudySpec, arm_spec_data
from ferbench.harness.study.checkpoints import checkpoint_dirs, newest_history, read_checkpoint, trial_folder, trial_statuses
from ferbench.harness.study.layout import CHECKPOINT_FILE, SELECTED_WEIGHTS_FILE, TRIAL_FAILED, experiment_paths


class ArmError(ValueError):
    """An experiment's arm cannot be used (no such experiment or arm, not completed, damaged); ``str()`` is one
    line naming the experiment, arm or file and the fix."""


def read_grid(experiment_dir: Path) -> list[dict]:
    """``ferbench/grid.json``; an ``ArmError`` when the folder is no experiment."""
    grid = experiment_paths(experiment_dir)["grid"]
    if not grid.is_file():
        raise ArmError(f"{experiment_dir}: not a FERBench experiment (no ferbench/grid.json); pass the experiment "
                       "folder that `ferbench run` printed")
    try:
        return json.loads(grid.read_text())
    except (OSError, ValueError) as err:
        raise ArmError(f"{grid}: cannot be read ({err}); the experiment folder is damaged") from None


def read_spec(experiment_dir: Path) -> StudySpec:
    """The experiment's stored spec (``ferbench/spec.yaml``), validated by this version."""
    path = experiment_paths(experiment_dir)["spec"]
    try:
        return StudySpec.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ArmError(f"{path}: cannot be read as this version's spec ({reason})") from None


def arm_spec(spec: StudySpec, arm: dict) -> StudySpec:
    """The spec the arm's trial read: the study's, with the arm's values of any extra grid axes
    (``arm["settings"]``, e.g. ``train.head``) in their sections (``ferbench.harness.spec.arm_spec_data``)."""
    return StudySpec.model_validate(arm_spec_data(spec.model_dump(mode="json"), arm.get("settings") or {}))


def _why_not_completed(experiment_dir: Path, arm: dict, arm_ids: list[str]) -> str:
    """The reason an arm stopped, for its error line ("" when none is recorded)."""
    if arm.get("status") == "unavailable":
        return arm.get("reason", "")
    folder = trial_folder(experiment_dir, arm["arm_id"], arm_ids)
    history = newest_history(folder) if folder is not None else []
    if history and TRIAL_FAILED in history[-1]:
        return str(history[-1][TRIAL_FAILED])
    error = folder / "error.txt" if folder is not None else None
    if error is not None and error.is_file():
        return next((line.strip() for line in reversed(error.read_text(errors="replace").splitlines()) if line.strip()), "")
    return ""


def completed_arm(experiment_dir: Path, arm_id: str) -> tuple[dict, Path]:
    """(grid row, trial folder) of ``arm_id``; an ``ArmError`` listing the arms when there is none of that
    name, or naming its status when it did not complete."""
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    arm = next((a for a in arms if a["arm_id"] == arm_id), None)
    if arm is None:
        raise ArmError(f"{experiment_dir}: no arm {arm_id!r}; its arms: {', '.join(arm_ids)}")
    statuses = trial_statuses(experiment_dir, arms)
    status = statuses[arm_id]
    if status != "completed":
        why = _why_not_completed(experiment_dir, arm, arm_ids)
        done = [a for a, s in statuses.items() if s == "completed"]
        choice = f"use a completed one ({', '.join(done)})" if done else "no arm of this experiment completed"
        raise ArmError(f"arm {arm_id} is {status}{f' ({why})' if why else ''}; only a completed arm has tested weights: {choice}")
    return arm, trial_folder(experiment_dir, arm_id, arm_ids)


def tested_weights(experiment_dir: Path, trial_dir: Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state_dict, the file it came from relative to the experiment, the trial's last metric row)."""
    for folder in checkpoint_dirs(trial_dir):
        restored = read_checkpoint(folder)
        if restored is None:  # cut by a crash or a full disk: the one before it is the newest intact
            continue
        state, history = restored
        source = folder / CHECKPOINT_FILE
        selected = trial_dir / SELECTED_WEIGHTS_FILE
        weights = state["model"]
        if selected.is_file():
            try:
                weights = torch.load(selected, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - a cut or foreign file raises many types
                raise ArmError(f"{selected}: cannot be read ({type(err).__name__}); the trial folder is damaged") from None
            source = selected
        return weights, str(source.relative_to(experiment_dir)), history[-1]
    raise ArmError(f"{trial_dir}: no intact checkpoint; the trial folder is damaged, run the arm again")
