"""The Ray Tune trainable: one grid arm, trained and evaluated, checkpointed every epoch.

A plain function trainable (Ray Tune's model). The study payload (images, splits, resolved
weight files, spec) arrives once through ``tune.with_parameters`` so the dataset sits in the
object store a single time and every trial maps it. A retried trial resumes from its newest
checkpoint and, on CPU with the same seed, continues with bit-identical numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ray import tune

from backbones import backbone_parameter_counts, count_parameters, create_backbone, get_backbone_info
from backbones.freezing import FreezePlan, apply_freeze, learning_rate_for_epoch
from harness.atomic import atomic_write_json
from harness.augment import InputAdapter
from harness.inference_speed import measure_inference
from harness.spec import StudySpec
from harness.training import accuracy_and_loss, predict, train_one_epoch

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics so far, beside the weights in each checkpoint
TEST_PREDICTIONS_FILE = "test_predictions.npz"
TEST_PER_CLASS_FILE = "test_per_class.json"
# Test-only fault injection, read on the driver: fail each arm once, right after the
# checkpoint of this epoch, leaving a marker file per arm so the retry runs through.
FAIL_ONCE_ENV = "FERBENCH_TEST_FAIL_ONCE_AT_EPOCH"
FAIL_MARKER_ENV = "FERBENCH_TEST_FAIL_MARKER_DIR"


def fault_injection_from_env() -> dict | None:
    at_epoch, marker_dir = os.environ.get(FAIL_ONCE_ENV), os.environ.get(FAIL_MARKER_ENV)
    return {"epoch": int(at_epoch), "marker_dir": marker_dir} if at_epoch and marker_dir else None


@dataclass
class StudyPayload:
    """Everything a trial needs besides its arm; shipped to the object store once."""

    spec: dict
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    splits: dict[int, dict[str, np.ndarray]]  # fold → train/val/test(/unlabeled) indices
    weight_files: dict[str, str]
    fault_injection: dict | None = None


def resolve_input_size(spec: StudySpec, backbone: str, data_size: int) -> int:
    setting = spec.train.input_size
    info = get_backbone_info(backbone)
    if setting == "native" or info.fixed_input_size:
        return info.input_size
    if setting == "data":
        return data_size
    return int(setting)


def _device(spec: StudySpec) -> torch.device:
    return torch.device("cuda") if spec.resources.gpu > 0 and torch.cuda.is_available() else torch.device("cpu")


def _make_optimizer(spec: StudySpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    # Every parameter is registered; frozen ones get no gradient and so no update, and a
    # two_stage schedule can unfreeze them later.
    params = list(model.parameters())
    train = spec.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    optimizer_class = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=train.lr, weight_decay=train.weight_decay)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # Object-store arrays are read-only; batches are gathered copies, so sharing is safe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _save_checkpoint(state: dict, history: list[dict]) -> None:
    """Report the newest epoch with a checkpoint. The checkpoint also carries the whole metric
    history: a crash right after ``tune.report`` can lose Tune's copy of the row, never this one."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
        tune.report(history[-1], checkpoint=tune.Checkpoint.from_directory(folder))


def _load_checkpoint() -> tuple[dict | None, list[dict]]:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        return state, json.loads((Path(folder) / HISTORY_FILE).read_text())


def _maybe_inject_failure(fault: dict | None, arm_id: str, epoch: int) -> None:
    if not fault or fault["epoch"] != epoch:
        return
    marker = Path(fault["marker_dir"]) / arm_id
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected test failure after epoch {epoch} of {arm_id}")


def run_trial(config: dict, payload: StudyPayload) -> None:
    """Train one arm for ``train.epochs`` epochs, reporting epoch 0 (before training) to the last."""
    spec = StudySpec.model_validate(payload.spec)
    arm = config["arm"]
    train = spec.train
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = _device(spec)

    images, labels = _as_tensor(payload.images), _as_tensor(payload.labels)
    fold = payload.splits[arm.get("fold", 0)]
    split = {name: torch.from_numpy(np.asarray(idx, dtype=np.int64)) for name, idx in fold.items()}
    info = get_backbone_info(arm["backbone"])
    input_size = resolve_input_size(spec, arm["backbone"], int(payload.images.shape[1]))
    adapter = InputAdapter(input_size, info.in_chans, info.channel_order, info.mean, info.std)
    augment = train.augment.model_dump(exclude={"enabled"}) if train.augment.enabled else None

    torch.manual_seed(arm["seed"])
    weights = payload.weight_files.get(arm["backbone"]) if arm["init"] == "pretrained" else None
    model = create_backbone(arm["backbone"], len(payload.class_names), weights_file=weights, head=train.head).to(device)
    optimizer = _make_optimizer(spec, model)
    generator = torch.Generator().manual_seed(arm["seed"])

    state, history = _load_checkpoint()
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1

    eval_kwargs = dict(batch_size=train.eval_batch_size, adapter=adapter, device=device)
    # attempt_start_epoch > 0 marks epochs run after a retry resumed from a checkpoint.
    static = {"input_size": input_size, "attempt_start_epoch": start_epoch}
    freeze = FreezePlan(**train.freeze.model_dump())

    for epoch in range(start_epoch, train.epochs + 1):
        epoch_start = time.perf_counter()
        apply_freeze(model, freeze, max(epoch, 1))  # epoch 0 reports the first epoch's trainable count
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_for_epoch(freeze, train.lr, max(epoch, 1))
        if epoch == 0:  # the untrained model: a clean pass over train stands in for the running average
            train_acc, train_loss = accuracy_and_loss(predict(model, images, split["train"], **eval_kwargs), labels[split["train"]])
            seconds, images_per_s = 0.0, float("nan")
        else:
            stats = train_one_epoch(
                model, optimizer, images, labels, split["train"], batch_size=train.batch_size,
                adapter=adapter, augment=augment, generator=generator, device=device,
            )
            train_acc, train_loss, seconds, images_per_s = stats.acc, stats.loss, stats.seconds, stats.images_per_s
        val_acc, val_loss = accuracy_and_loss(predict(model, images, split["val"], **eval_kwargs), labels[split["val"]])
        metrics = {
            "epoch": epoch, "train_acc": train_acc, "train_loss": train_loss, "val_acc": val_acc,
            "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
            "train_images_per_s": images_per_s, **static, **count_parameters(model),
        }
        if epoch == train.epochs:
            metrics.update(_test_metrics(model, images, labels, split["test"], payload.class_names, eval_kwargs))
            metrics.update(measure_inference(model, images[split["test"][: train.eval_batch_size]], adapter=adapter, device=device,
                                             batch_size=train.eval_batch_size))
            metrics.update({f"backbone_{k}": v for k, v in backbone_parameter_counts(arm["backbone"], model).items()})
        metrics["epoch_wall_s"] = time.perf_counter() - epoch_start  # training, evaluation and test
        history.append(metrics)
        _save_checkpoint(
            {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "arm": arm,
            },
            history,
        )
        _maybe_inject_failure(payload.fault_injection, arm["arm_id"], epoch)


def _test_metrics(model, images, labels, test_idx, class_names: tuple[str, ...], eval_kwargs: dict) -> dict:
    """Final test evaluation (torchmetrics). Predictions, per-class precision / recall / F1 and the
    confusion matrix are kept as trial artifacts for the report."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    num_classes = len(class_names)
    logits = predict(model, images, test_idx, **eval_kwargs)
    targets = labels[test_idx]
    probabilities = torch.softmax(logits, dim=1)
    np.savez_compressed(
        TEST_PREDICTIONS_FILE, indices=test_idx.numpy(), targets=targets.numpy(), probabilities=probabilities.numpy()
    )
    scores = {
        name: function(logits, targets, num_classes=num_classes, average=None, zero_division=0).tolist()
        for name, function in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score))
    }
    atomic_write_json(Path(TEST_PER_CLASS_FILE).resolve(), {
        "class_names": list(class_names), **scores,
        "support": torch.bincount(targets, minlength=num_classes).tolist(),
        "confusion_matrix": multiclass_confusion_matrix(logits, targets, num_classes=num_classes).tolist(),
    })
    test_acc, test_loss = accuracy_and_loss(logits, targets)
    return {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "test_macro_f1": float(multiclass_f1_score(logits, targets, num_classes=num_classes, average="macro")),
        "test_weighted_f1": float(multiclass_f1_score(logits, targets, num_classes=num_classes, average="weighted")),
        "test_balanced_acc": float(multiclass_accuracy(logits, targets, num_classes=num_classes, average="macro")),
    }
