"""One arm of a finished experiment as a model: rebuilt through the backbone registry, holding the
weights its test scores are of (``ferbench.harness.study.finished_arm`` finds them), with how its trial fed
it images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.export.preprocess import Preprocessing
from ferbench.harness.spec import StudySpec
from ferbench.harness.study.finished_arm import ArmError, arm_spec, completed_arm, read_grid, read_spec, tested_weights
from ferbench.harness.tree_spec import is_tree
from ferbench.harness.study.layout import TEST_PER_CLASS_FILE, experiment_paths

__all__ = ["ArmModel", "ExportError", "build_network", "completed_arm", "load_arm", "read_grid", "read_manifest",
           "tested_weights"]


class ExportError(ArmError):
    """An arm cannot be exported, or an export folder cannot be read; ``str()`` is one line naming the
    experiment, arm or file and the fix. Finding the arm raises its base, ``ArmError``."""


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


def read_manifest(experiment_dir: Path) -> dict:
    path = experiment_paths(experiment_dir)["manifest"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: cannot be read ({err}); the experiment folder is damaged") from None


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
    if is_tree(arm["backbone"]):
        raise ExportError(f"{arm_id} is a decision tree of CNNs ({arm['backbone']}); export writes one network: name a "
                          "single-network arm of the experiment (its tree's node weights are in the trial's newest "
                          "checkpoint, as nodes.<node>.*)")
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
