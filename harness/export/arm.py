"""One arm of a finished experiment as a model: rebuilt through the backbone registry, holding the
weights its test scores are of, with how its trial fed it images.

Which weights: ``selected_weights.pt`` where the trial wrote one (``train.select=best_val``, whose best
epoch may be in no kept checkpoint, and pseudo-labelling arms, whose chosen round may not be the last;
``ferbench.harness.train.test_artifacts``), else the newest intact checkpoint, which holds the last
epoch's weights: those ``train.select=last`` tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.export.preprocess import Preprocessing
from ferbench.harness.spec import StudySpec, arm_spec_data
from ferbench.harness.study.checkpoints import checkpoint_dirs, newest_history, read_checkpoint, trial_folder, trial_statuses
from ferbench.harness.study.layout import (
    CHECKPOINT_FILE, SELECTED_WEIGHTS_FILE, TEST_PER_CLASS_FILE, TRIAL_FAILED, experiment_paths,
)


class ExportError(ValueError):
    """An arm cannot be exported, or an export folder cannot be read; ``str()`` is one line naming the
    experiment, arm or file and the fix."""


@dataclass
class ArmModel:
    """An arm's tested model, in eval mode on the CPU, and what describes it in config.json."""

    experiment_dir: Path
    arm: dict  # the arm's row of ferbench/grid.json
    trial_dir: Path
    weights_from: str  # the file the weights came from, relative to the experiment folder
    model: nn.Module
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    spec: StudySpec
    result: dict  # the trial's last metric row: test scores, selected epoch, round
    thresholds: list[float] | None = None  # a multi-label task's decision thresholds, as its test scores used them

    @property
    def arm_id(self) -> str:
        return self.arm["arm_id"]

    def selection(self) -> dict:
        """Which weights ``train.select`` picked: the rule, and the epoch (and pseudo-labelling round) they are of."""
        train = self.spec.train
        return {
            "select": train.select, **({"select_metric": train.select_metric} if train.select == "best_val" else {}),
            "selected_epoch": self.result.get("selected_epoch"),
            **({"selected_round": self.result["pl_selected_round"]} if "pl_selected_round" in self.result else {}),
            "weights_from": self.weights_from,
        }


def build_network(backbone: str, num_classes: int, head: str, model_options: dict) -> nn.Module:
    """The arm's architecture, in eval mode (the weights are loaded by the caller)."""
    from ferbench.backbones import BackboneOptions

    return create_backbone(backbone, num_classes, head=head, options=BackboneOptions(**model_options)).eval()


def read_grid(experiment_dir: Path) -> list[dict]:
    """``ferbench/grid.json``; an ``ExportError`` when the folder is no experiment."""
    grid = experiment_paths(experiment_dir)["grid"]
    if not grid.is_file():
        raise ExportError(f"{experiment_dir}: not a FERBench experiment (no ferbench/grid.json); pass the experiment "
                          "folder that `ferbench run` printed")
    try:
        return json.loads(grid.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{grid}: cannot be read ({err}); the experiment folder is damaged") from None


def read_manifest(experiment_dir: Path) -> dict:
    path = experiment_paths(experiment_dir)["manifest"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: cannot be read ({err}); the experiment folder is damaged") from None


def read_spec(experiment_dir: Path) -> StudySpec:
    from ferbench.harness.study.experiment import read_stored_spec

    try:
        return read_stored_spec(experiment_dir)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ExportError(f"{experiment_paths(experiment_dir)['spec']}: cannot be read as this version's spec ({reason})") from None


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
    """(grid row, trial folder) of ``arm_id``; an ``ExportError`` listing the arms when there is none of that
    name, or naming its status when it did not complete."""
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    arm = next((a for a in arms if a["arm_id"] == arm_id), None)
    if arm is None:
        raise ExportError(f"{experiment_dir}: no arm {arm_id!r}; its arms: {', '.join(arm_ids)}")
    statuses = trial_statuses(experiment_dir, arms)
    status = statuses[arm_id]
    if status != "completed":
        why = _why_not_completed(experiment_dir, arm, arm_ids)
        done = [a for a, s in statuses.items() if s == "completed"]
        choice = f"export a completed one ({', '.join(done)})" if done else "no arm of this experiment completed"
        raise ExportError(f"arm {arm_id} is {status}{f' ({why})' if why else ''}; only a completed arm has tested weights: {choice}")
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
                raise ExportError(f"{selected}: cannot be read ({type(err).__name__}); the trial folder is damaged") from None
            source = selected
        return weights, str(source.relative_to(experiment_dir)), history[-1]
    raise ExportError(f"{trial_dir}: no intact checkpoint; the trial folder is damaged, run the arm again")


def _preprocessing(spec: StudySpec, manifest: dict, backbone: str, result: dict) -> Preprocessing:
    """How the trial fed its images: the dataset's stored form (manifest) and the adapter's settings."""
    info = get_backbone_info(backbone)
    dataset = manifest["dataset"]
    image_size = (int(dataset["image_size"][0]), int(dataset["image_size"][1]))
    input_size = result.get("input_size")
    if input_size is None:  # written by every trial row; resolved again only for a foreign history
        from ferbench.harness.train.trial import resolve_input_size

        input_size = resolve_input_size(spec, backbone, image_size[0])
    return Preprocessing(
        image_size=image_size, grayscale=int(dataset["channels"]) == 1, face_detect=spec.data.face_detect,
        face_size=spec.data.face_size, input_size=int(input_size), in_chans=info.in_chans,
        channel_order=info.channel_order, mean=tuple(info.mean), std=tuple(info.std),
    )


def _test_scores(trial_dir: Path) -> dict:
    """The trial's test scores file: the head's output names as the trial scored them (emotion classes, or a
    multi-label task's labels) and, for labels, the thresholds used; {} when unreadable."""
    try:
        return json.loads((trial_dir / TEST_PER_CLASS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def load_arm(experiment_dir: str | Path, arm_id: str) -> ArmModel:
    """The completed arm ``arm_id`` of the experiment, its tested weights loaded (strictly: every tensor)."""
    experiment_dir = Path(experiment_dir).expanduser().resolve()
    arm, trial_dir = completed_arm(experiment_dir, arm_id)
    spec, manifest = arm_spec(read_spec(experiment_dir), arm), read_manifest(experiment_dir)
    scored = _test_scores(trial_dir)
    class_names = tuple(scored.get("class_names") or manifest["dataset"]["class_names"])
    weights, source, result = tested_weights(experiment_dir, trial_dir)
    model = build_network(arm["backbone"], len(class_names), spec.train.head, spec.model.model_dump())
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ExportError(f"{experiment_dir / source}: does not fit {arm['backbone']} as this version builds it ({first})") from None
    return ArmModel(experiment_dir=experiment_dir, arm=arm, trial_dir=trial_dir, weights_from=source, model=model.eval(),
                    class_names=class_names, preprocessing=_preprocessing(spec, manifest, arm["backbone"], result),
                    spec=spec, result=result, thresholds=scored.get("threshold"))
