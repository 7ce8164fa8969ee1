"""The trial of a ``tree:<name>`` arm: each node of the decision tree trained in turn, then the tree tested end to end.

A node trains as an arm of its own would (``train_rounds``: its epochs, its variant, ``train.select``), on the images
of its classes with its groups as targets, and with the study's settings under its own (``node_spec_data``). Its rows
carry ``node``; its round ends with its test accuracy on its own classes' test images. After the last node, one row
(``node: tree``) holds the tree's routed train / validation accuracy and its test scores, written as any arm's
(``test_predictions.npz``, ``test_per_class.json``), and ``tree_nodes.json`` holds each node's scores and confusion.

Checkpoints carry the finished nodes' weights and scores, so a retry or ``--resume`` continues inside the node it
stopped in and never retrains a finished one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ferbench.backbones import backbone_parameter_counts, count_parameters
from ferbench.backbones.tree import CnnTree, TreeLayout
from ferbench.harness.spec import StudySpec, arm_spec_data
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.checkpoints import FINAL_MARKER, is_final
from ferbench.harness.study.layout import TREE_NODES_FILE
from ferbench.harness.tasks.classification import class_scores
from ferbench.harness.train.cross_eval import evaluate_extra_datasets
from ferbench.harness.train.inference_speed import measure_inference
from ferbench.harness.train.loop import as_tensor, predict
from ferbench.harness.train.trial import StudyPayload, _build_trial, _restore, _save_checkpoint, _test_metrics, _Trial, train_rounds
from ferbench.harness.tree_spec import TreeNodeSpec, node_spec_data, tree_name
from ferbench.harness.variants.trainer import RoundState

TREE_ROW = "tree"  # the ``node`` of the row that tests the whole tree


def node_targets(labels: np.ndarray, class_names: tuple[str, ...], node: TreeNodeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(each image's group index at ``node`` (0 where the image is not one of its classes), which images are)."""
    group_of = {class_names.index(c): g for g, group in enumerate(node.groups) for c in group}
    lookup = np.full(len(class_names), -1, dtype=np.int64)
    for class_index, group in group_of.items():
        lookup[class_index] = group
    groups = lookup[labels]
    return np.where(groups >= 0, groups, 0), groups >= 0


def node_payload(payload: StudyPayload, spec_data: dict, node: TreeNodeSpec, arm_variant: str) -> StudyPayload:
    """The study's payload as ``node`` trains on it: its groups as classes, every split part cut to its classes' images."""
    targets, member = node_targets(payload.labels, payload.class_names, node)
    splits = {fold: {part: idx[member[idx]] for part, idx in parts.items() if part in ("train", "val", "test")}
              for fold, parts in payload.splits.items()}
    return replace(payload, spec=node_spec_data(spec_data, node, arm_variant), labels=targets,
                   class_names=tuple("+".join(group) for group in node.groups), splits=splits)


def _node_trial(config: dict, payload: StudyPayload, spec_data: dict, node: TreeNodeSpec) -> _Trial:
    arm = config["arm"]
    node_arm = {**arm, "backbone": node.backbone, "variant": node.variant or arm["variant"], "settings": None}
    return _build_trial({**config, "arm": node_arm}, node_payload(payload, spec_data, node, arm["variant"]))


def _node_round_end(node: TreeNodeSpec, progress: dict):
    """A node's round end: its test scores on its classes' test images, its weights and scores kept in ``progress``."""

    def end(trial: _Trial, rounds: RoundState, metrics: dict) -> None:
        test_idx = trial.split["test"]
        logits = predict(trial.model, trial.images, test_idx, **trial.eval_kwargs)
        scalars, per_class = class_scores(logits, trial.labels[test_idx], len(node.groups))
        metrics.update({"node_test_acc": scalars["acc"], "node_test_macro_f1": scalars["macro_f1"]})
        progress["done"][node.name] = {key: value.detach().cpu().clone() for key, value in trial.model.state_dict().items()}
        progress["scores"][node.name] = {
            "groups": [list(group) for group in node.groups], "backbone": node.backbone,
            "variant": trial.arm["variant"], "selected_epoch": metrics["selected_epoch"], "val_acc": metrics["val_acc"],
            "train_size": len(trial.split["train"]), "test_size": len(test_idx), "test": {**scalars, **per_class},
        }
        progress["node"] += 1
        rounds.finish("")

    return end


def run_tree_trial(config: dict, payload: StudyPayload) -> None:
    state, history = _restore(config)
    if is_final(history):
        return
    arm = config["arm"]
    spec = StudySpec.model_validate(arm_spec_data(payload.spec, arm.get("settings") or {}))
    tree = spec.trees[tree_name(arm["backbone"])]
    layout = tree.layout()
    spec_data = spec.model_dump(mode="json")
    progress = (state or {}).get("tree") or {"node": 0, "done": {}, "scores": {}}
    attempt_start = history[-1]["epoch"] + 1 if state is not None else 0  # > 0: this attempt resumed a checkpoint
    nodes: dict[str, _Trial] = {}
    for index, node in enumerate(tree.nodes):
        trial = nodes[node.name] = _node_trial(config, payload, spec_data, node)
        trial.static["attempt_start_epoch"] = attempt_start
        if index < progress["node"]:
            trial.model.load_state_dict(progress["done"][node.name])
            continue
        resumed = state if state is not None and state.get("tree_node") == node.name else None  # stopped inside it
        first_epoch = history[-1]["epoch"] + 1 if history else 0
        if not train_rounds(trial, resumed, history, first_epoch, tags={"node": node.name},
                            extra_state=lambda name=node.name: {"tree": progress, "tree_node": name},
                            round_end=_node_round_end(node, progress)):
            return  # a node's loss stopped being finite: the trial stopped for good, with the row saying why
    _test_tree(config, payload, spec, layout, nodes, progress, history)


def _test_tree(config: dict, payload: StudyPayload, spec: StudySpec, layout: TreeLayout, nodes: dict[str, _Trial],
               progress: dict, history: list[dict]) -> None:
    """The tree's row: routed train and validation accuracy, its test scores and artifacts, its measures."""
    from ferbench.harness.tasks import get_task
    from ferbench.harness.variants.trainer import trainer_for

    arm = config["arm"]
    tree = spec.trees[tree_name(arm["backbone"])]
    root = nodes[layout.root]
    model = CnnTree(layout, payload.class_names, {name: trial.model for name, trial in nodes.items()}, tree.routing).eval()
    fold = payload.splits[arm.get("fold", 0)]
    trial = replace(root, spec=spec, arm=arm, payload=payload, model=model, labels=as_tensor(payload.labels),
                    split={name: torch.from_numpy(np.asarray(idx, dtype=np.int64)) for name, idx in fold.items()},
                    task=get_task(spec.task, spec), variant=trainer_for(arm["variant"], spec), static=dict(root.static))
    epoch = history[-1]["epoch"] + 1
    train_logits = predict(model, trial.images, trial.split["train"], **trial.eval_kwargs)
    train_acc, train_loss = trial.task.accuracy_and_loss(train_logits, trial.labels[trial.split["train"]])
    val_logits, val_targets = trial.validation_logits()
    val_acc, val_loss = trial.task.accuracy_and_loss(val_logits, val_targets)
    scalars, _ = _test_metrics(trial)
    test_idx, batch = trial.split["test"], trial.execution.eval_batch_size
    counts = [backbone_parameter_counts(node.backbone, nodes[node.name].model) for node in tree.nodes]
    row = {
        "epoch": epoch, "round": 0, "round_epoch": 0, "node": TREE_ROW, "train_size": len(trial.split["train"]),
        "epoch_images": 0, "train_acc": train_acc, "train_loss": train_loss, "val_acc": val_acc, "val_loss": val_loss,
        **scalars, **trial.static, **count_parameters(model),
        **measure_inference(model, trial.images[test_idx[:batch]], adapter=trial.adapter, device=trial.device,
                            batch_size=batch, **trial.precision_kwargs),
        "backbone_params": sum(c["params"] for c in counts), "backbone_keras_params": sum(c["keras_params"] for c in counts),
        "tree_nodes": len(tree.nodes), **evaluate_extra_datasets(trial), FINAL_MARKER: True,
    }
    atomic_write_json(Path(TREE_NODES_FILE).resolve(), {
        "tree": tree_name(arm["backbone"]), "routing": tree.routing, "root": layout.root, "class_names": list(payload.class_names),
        "nodes": [{"name": node.name, **progress["scores"][node.name]} for node in tree.nodes],
    })
    history.append(row)
    _save_checkpoint({"model": model.state_dict(), "epoch": epoch, "arm": arm, "tree": progress}, history)
