"""Transfer: a study whose pretrained arms start from an arm of a finished experiment (the Moravčík thesis, §5.4:
a CNN trained on FER2013, its convolutional layers kept, retrained on CK+).

The form: ``weights.files.<backbone>: EXPERIMENT_DIR/ARM_ID``. A value whose parent folder is a FERBench experiment
(it holds ``ferbench/grid.json``) names an arm of it: the last path element is the arm id, as ``ferbench/grid.json``
and the report list it, or the name of its trial folder (``<arm_id>_<trial id>``). A value that is a file stays a
weight file; an arm id is never a file of the experiment's top level, so the two never collide. It is read as any
``weights.files`` entry: by the arms with ``init: pretrained`` of that backbone, with published weights
(``weights.source``), and checked once, by preflight's first stage.

What loads: the arm's tested weights (``ferbench.harness.study.finished_arm.tested_weights``: the ones its test scores
came from), all but the output layer, which the builders leave out, so the new study may have another number of
classes. The trials read ``selected_weights.pt`` where the arm has one; otherwise its newest intact checkpoint's model,
written once to FERBench's cache as a plain state dict (a checkpoint also carries optimizer and RNG state, which no
builder reads). The manifest and the report's ``weights`` column say ``arm <experiment>/<arm_id>``.

Refused, each in one line naming the key and the fix: a folder that is no experiment, an arm it does not have, an arm
that did not complete, an arm of another backbone, an arm trained under a ``train.head`` other than ``linear`` (its
network is the head's, not the backbone's own), and weights that do not fit the network this study builds (its
``model.*`` options, e.g. ``model.moravcik_blocks``). ``fc_only`` freezing and ``reinit_fc`` on a backbone without
convolutional and fully connected parts (``ferbench.backbones.conv_fc``) are refused here too.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import torch

from ferbench.backbones import create_backbone
from ferbench.backbones.conv_fc import require_fc_layers
from ferbench.backbones.registry import describe_mismatch, state_dict_mismatch
from ferbench.backbones.weights import WeightStatus
from ferbench.cache_dirs import cache_dir
from ferbench.harness.spec import StudySpec, arm_spec_data
from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.harness.study.finished_arm import ArmError, arm_spec, completed_arm, read_grid, read_spec, tested_weights
from ferbench.harness.study.layout import SELECTED_WEIGHTS_FILE, is_experiment
from ferbench.harness.tree_spec import is_tree

log = logging.getLogger(__name__)


def arm_reference(value: str) -> tuple[Path, str] | None:
    """(experiment folder, the path's last element) when ``value`` names an arm (its parent is an experiment folder),
    ``(value, "")`` when it is an experiment folder itself (the arm is missing), else None: a weight file's path."""
    path = Path(value).expanduser().absolute()
    if path.is_file():
        return None
    if is_experiment(path):
        return path.resolve(), ""
    if is_experiment(path.parent):
        return path.parent.resolve(), path.name
    return None


def _arm_id(experiment_dir: Path, name: str) -> str:
    """The arm id ``name`` stands for: itself, or the arm whose trial folder it is (the longest id it starts with)."""
    arm_ids = [arm["arm_id"] for arm in read_grid(experiment_dir)]
    if not name:
        raise ArmError(f"{experiment_dir} is an experiment; name one of its arms after it: {experiment_dir}/ARM_ID, "
                       f"ARM_ID one of {', '.join(arm_ids)}")
    if name in arm_ids or not (experiment_dir / name / "params.json").is_file():
        return name  # an unknown name: completed_arm lists the arms
    return max((a for a in arm_ids if name.startswith(f"{a}_")), key=len, default=name)


def _option_differences(spec: StudySpec, source: StudySpec) -> list[str]:
    """The ``model.*`` settings the arm was built with that this study sets otherwise, as ``--set`` assignments."""
    ours, theirs = spec.model.model_dump(), source.model.model_dump()
    return [f"model.{key}={value}" for key, value in theirs.items() if ours.get(key) != value]


def _fit_problem(spec: StudySpec, source: StudySpec, backbone: str, weights: dict[str, torch.Tensor], where: str) -> str:
    """How the arm's weights do not fit ``backbone`` as this study builds it, in one line ("" when every tensor but the
    output layer fits), read on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = create_backbone(backbone, num_classes=2, options=spec.model.backbone_options())
    head = model.get_classifier()
    head_keys = tuple(f"{name}." for name, module in model.named_modules() if module is head)
    kept = {key: value for key, value in weights.items() if not key.startswith(head_keys)}
    missing, unexpected, shapes = state_dict_mismatch(model.state_dict(), kept)
    missing = [key for key in missing if not key.startswith(head_keys)]
    if not (missing or unexpected or shapes):
        return ""
    differences = _option_differences(spec, source)
    line = describe_mismatch(where, backbone, missing, unexpected, shapes)
    if differences:
        line += f"; the arm was built with {', '.join(differences)}: add --set {' --set '.join(differences)}"
    return line


def _plain_state_file(experiment_dir: Path, arm_id: str, weights: dict[str, torch.Tensor], weights_from: str) -> Path:
    """A file holding the arm's tested weights alone, as builders read weight files: ``selected_weights.pt`` itself, or
    the checkpoint's model written once to the cache (named by its content, so a second study reuses it)."""
    if Path(weights_from).name == SELECTED_WEIGHTS_FILE:
        return experiment_dir / weights_from
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    data = buffer.getvalue()
    target = cache_dir("arm-weights", experiment_dir.name) / f"{arm_id}-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    if not target.is_file():
        atomic_write_bytes(target, data)
    return target


def _checked_arm(spec: StudySpec, backbone: str, experiment_dir: Path, name: str) -> tuple[str, str, dict, str]:
    """(arm id, its label, its tested weights, the file they came from) when the arm can start ``backbone``'s arms; an
    ``ArmError`` naming what stops it otherwise."""
    arm_id = _arm_id(experiment_dir, name)
    label = f"arm {experiment_dir.name}/{arm_id}"
    arm, trial_dir = completed_arm(experiment_dir, arm_id)
    if arm["backbone"] != backbone:
        raise ArmError(f"{label} trained {arm['backbone']}, not {backbone}; name an arm of {backbone}, or set it as "
                       f"weights.files.{arm['backbone']} (with {arm['backbone']} in grid.backbone)")
    source = arm_spec(read_spec(experiment_dir), arm)
    if source.train.head != "linear":
        raise ArmError(f"{label} was trained with train.head={source.train.head}, so its weights are that head's network, "
                       f"not {backbone}'s own; transfer from an arm trained with train.head=linear")
    weights, weights_from, _ = tested_weights(experiment_dir, trial_dir)
    problem = _fit_problem(spec, source, backbone, weights, f"{label} ({weights_from})")
    if problem:
        raise ArmError(problem)
    return arm_id, label, weights, weights_from


def arm_weights(spec: StudySpec, backbone: str) -> WeightStatus | None:
    """``weights.files.<backbone>``'s arm resolved to its tested weights (a ``WeightStatus`` whose message is the problem
    when it cannot be used), or None when the entry names no arm (no entry, or a weight file)."""
    reference = arm_reference(spec.weights.files.get(backbone) or "")
    if reference is None:
        return None
    try:
        arm_id, label, weights, weights_from = _checked_arm(spec, backbone, *reference)
    except ArmError as err:
        return WeightStatus(backbone, False, None, "unusable", f"weights.files.{backbone}: {err}")
    path = _plain_state_file(reference[0], arm_id, weights, weights_from)
    log.info("  weights: %s from %s (its tested weights, %s)", backbone, label, weights_from)
    return WeightStatus(backbone, True, str(path), label, "")


def freeze_problems(spec: StudySpec) -> list[str]:
    """``train.freeze.policy=fc_only`` and ``train.freeze.reinit_fc`` (pretrained arms) on a backbone without
    convolutional and fully connected parts, or under a head that replaces them: one line per backbone and head, naming
    the settings, read from each arm's own spec (an extra grid axis may set them) on the meta device."""
    needs: dict[tuple[str, str], list[str]] = {}  # (backbone, head) → the settings that need the split
    options: dict[tuple[str, str], StudySpec] = {}
    data = spec.model_dump(mode="json")
    for arm in spec.arms():
        if is_tree(arm["backbone"]):  # a tree's nodes train from random init (ferbench.harness.tree_spec)
            continue
        own = StudySpec.model_validate(arm_spec_data(data, arm["settings"])) if arm.get("settings") else spec
        freeze, key = own.train.freeze, (arm["backbone"], own.train.head)
        for setting, used in (("train.freeze.policy=fc_only", freeze.policy == "fc_only"),
                              ("train.freeze.reinit_fc", freeze.reinit_fc and arm["init"] == "pretrained")):
            if used and setting not in needs.setdefault(key, []):
                needs[key].append(setting)
                options.setdefault(key, own)
    problems = []
    for (backbone, head), settings in needs.items():
        if not settings:
            continue
        with torch.device("meta"):
            model = create_backbone(backbone, num_classes=2, head=head,
                                    options=options[(backbone, head)].model.backbone_options())
        try:
            require_fc_layers(model, " and ".join(settings), backbone)
        except ValueError as err:
            problems.append(str(err))
    return problems
