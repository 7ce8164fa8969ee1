"""The Ray Tune trainable: one grid arm, trained and evaluated, checkpointed every epoch.

A plain function trainable (Ray Tune's model). The study payload (images, splits, resolved
weight files, spec) arrives once through ``tune.with_parameters`` so the dataset sits in the
object store a single time and every trial maps it. A retried trial resumes from its newest
checkpoint and, on CPU with the same seed, continues with bit-identical numbers.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ray import tune

from ferbench.backbones import backbone_parameter_counts, count_parameters, create_backbone, get_backbone_info
from ferbench.backbones.conv_fc import reinit_fc
from ferbench.backbones.freezing import FreezePlan, apply_freeze
from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.harness.study.checkpoints import CHECKPOINT_DIR, FINAL_MARKER, TRIAL_FAILED, is_final, read_checkpoint, write_checkpoint_files
from ferbench.harness.train.augment import InputAdapter
from ferbench.harness.train.cross_eval import CrossEvalSet, evaluate_extra_datasets
from ferbench.harness.train.inference_speed import measure_inference
from ferbench.harness.train.performance import Execution, apply_process_settings, resolve_execution, select_device
from ferbench.harness.train.schedules import learning_rate_for_epoch, plateau_unfreeze_epoch
from ferbench.harness.train.selection import BestEpoch
from ferbench.harness.spec import StudySpec, arm_spec_data
from ferbench.harness.tasks import get_task
from ferbench.harness.train.loop import NonFiniteLoss, as_tensor, predict, train_one_epoch
from ferbench.harness.variants.trainer import RoundState, VariantTrainer, trainer_for

# Test-only fault injection, read on the driver: fail each arm once, right after the
# checkpoint of this epoch, leaving a marker file per arm so the retry runs through; the arm
# named by FAIL_ALWAYS_ENV fails there on every attempt.
FAIL_ONCE_ENV = "FERBENCH_TEST_FAIL_ONCE_AT_EPOCH"
FAIL_MARKER_ENV = "FERBENCH_TEST_FAIL_MARKER_DIR"
FAIL_ALWAYS_ENV = "FERBENCH_TEST_FAIL_ALWAYS_ARM"


def fault_injection_from_env() -> dict | None:
    at_epoch, marker_dir = os.environ.get(FAIL_ONCE_ENV), os.environ.get(FAIL_MARKER_ENV)
    if not (at_epoch and marker_dir):
        return None
    return {"epoch": int(at_epoch), "marker_dir": marker_dir, "always": os.environ.get(FAIL_ALWAYS_ENV)}


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
    # The weight files' bytes, when trials may run on machines that lack the driver's files
    # (a cluster): published or synth-identity weights then travel with the dataset.
    weight_blobs: dict[str, bytes] = field(default_factory=dict)
    # eval.datasets: the extra test sets every finished arm is scored on (ferbench.harness.train.cross_eval).
    eval_sets: list[CrossEvalSet] = field(default_factory=list)


def resolve_input_size(spec: StudySpec, backbone: str, data_size: int) -> int:
    setting = spec.train.input_size
    info = get_backbone_info(backbone)
    if setting == "native" or info.fixed_input_size:
        return info.input_size
    if setting == "data":
        return data_size
    return int(setting)


def _device(spec: StudySpec) -> torch.device:
    return select_device(spec.resources.gpu)


def _make_optimizer(spec: StudySpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    # Every parameter is registered; frozen ones get no gradient and so no update, and a
    # two_stage schedule can unfreeze them later.
    params = list(model.parameters())
    train = spec.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    optimizer_class = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=train.lr, weight_decay=train.weight_decay)


def _save_checkpoint(state: dict, history: list[dict]) -> None:
    """Report the newest epoch with a sealed checkpoint (``ferbench.harness.study.checkpoints``). The checkpoint also
    carries the whole metric history: a crash right after ``tune.report`` can lose Tune's copy of the
    row, never this one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint_files(Path(folder), buffer.getvalue(), history)
        tune.report(history[-1], checkpoint=tune.Checkpoint.from_directory(folder))


@contextlib.contextmanager
def _local_view(fs, path: str):
    """A checkpoint folder of the results storage as a local folder (a copy when the storage is a bucket)."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory() as folder:
        pafs.copy_files(path, folder, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(folder)


def _checkpoint_paths(fs, trial_path: str) -> list[str]:
    """The ``checkpoint_NNNNNN`` folders of a trial folder in the results storage, newest first."""
    import pyarrow.fs as pafs

    entries = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    numbered = [(int(m.group(1)), e.path) for e in entries
                if e.type == pafs.FileType.Directory and (m := CHECKPOINT_DIR.match(e.base_name))]
    return [path for _, path in sorted(numbered, reverse=True)]


def _restore(config: dict) -> tuple[dict | None, list[dict]]:
    """The newest intact checkpoint of this trial (a retry), else of the trial folder it continues
    (``resume_from``, set by ``--resume``). Cut checkpoints, e.g. after a full disk, are passed over."""
    storage = tune.get_context().get_storage()
    fs = storage.storage_filesystem
    folders = [storage.trial_fs_path]
    if config["arm"].get("resume_from"):
        folders.append(f"{storage.experiment_fs_path}/{config['arm']['resume_from']}")
    for folder in folders:
        for path in _checkpoint_paths(fs, folder):
            with _local_view(fs, path) as local:
                restored = read_checkpoint(local)
            if restored is not None:
                return restored
    return None, []


def _maybe_inject_failure(fault: dict | None, arm_id: str, epoch: int) -> None:
    if fault and arm_id == fault.get("always") and epoch >= fault["epoch"]:  # every attempt fails
        raise RuntimeError(f"injected permanent test failure after epoch {epoch} of {arm_id}")
    if not fault or fault["epoch"] != epoch:
        return
    marker = Path(fault["marker_dir"]) / arm_id
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected test failure after epoch {epoch} of {arm_id}")


@dataclass
class _Trial:
    """One arm's model, optimizer, data and settings: what every row (epoch) of the trial uses."""

    spec: StudySpec
    arm: dict
    payload: StudyPayload
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    initial_weights: dict  # the arm's weights before training: students with student_init=initial
    images: torch.Tensor
    labels: torch.Tensor
    split: dict
    adapter: InputAdapter
    execution: Execution
    static: dict
    task: Any  # ferbench.harness.tasks: loss, metrics, test scores and artifacts
    variant: VariantTrainer  # the arm's variant hooks (ferbench.harness.variants)

    @property
    def device(self) -> torch.device:
        return self.execution.device

    @property
    def precision_kwargs(self) -> dict:
        return dict(autocast_dtype=self.execution.autocast_dtype, channels_last=self.execution.channels_last)

    @property
    def eval_kwargs(self) -> dict:
        return dict(batch_size=self.execution.eval_batch_size, adapter=self.adapter, device=self.device, **self.precision_kwargs)

    def predict_probabilities(self, indices: torch.Tensor) -> torch.Tensor:
        return self.task.probabilities(predict(self.model, self.images, indices, **self.eval_kwargs))

    def validation_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's logits, the targets) on the validation part."""
        return predict(self.model, self.images, self.split["val"], **self.eval_kwargs), self.labels[self.split["val"]]

    def restart_training(self, from_initial: bool) -> None:
        """A new training run within the trial (a variant's next round): a fresh optimizer (and
        schedule), from the current weights or the arm's initial ones."""
        if from_initial:
            self.model.load_state_dict(self.initial_weights)
        self.optimizer = _make_optimizer(self.spec, self.model)

    def freeze_plan(self, round_rows: list[dict]) -> FreezePlan:
        """The freezing plan of the round's next epoch; with ``unfreeze_on=val_plateau`` its fine-tuning starts
        where the round's rows so far say the head stopped improving."""
        spec = self.spec.train.freeze
        plan = FreezePlan(**spec.model_dump(exclude={"unfreeze_on", "patience"}))
        if spec.policy == "two_stage" and spec.unfreeze_on == "val_plateau":
            return replace(plan, unfreeze_epoch=plateau_unfreeze_epoch(spec.patience, spec.unfreeze_epoch, round_rows))
        return plan

    def run_epoch(self, epoch: int, round_no: int, round_epoch: int, train_idx: torch.Tensor, targets: torch.Tensor,
                  round_rows: list[dict] = ()) -> dict:
        """Train one epoch (``round_epoch`` 0: evaluate only) on ``train_idx`` with ``targets``; val metrics.
        ``round_rows``: the round's rows so far (what a plateau-triggered unfreeze decides on)."""
        train, freeze = self.spec.train, self.freeze_plan(list(round_rows))
        apply_freeze(self.model, freeze, max(round_epoch, 1))  # epoch 0 reports the first epoch's trainable count
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_for_epoch(freeze, train.lr, max(round_epoch, 1))
        weights = self.task.loss_weights(targets[train_idx])
        if weights is None:
            weights = self.variant.loss_weights(targets[train_idx], len(self.payload.class_names))
        if round_epoch == 0:  # the untrained model: a clean pass over train stands in for the running average
            logits = predict(self.model, self.images, train_idx, **self.eval_kwargs)
            train_acc, train_loss = self.task.accuracy_and_loss(logits, targets[train_idx], weights)
            seconds, images_per_s, epoch_images = 0.0, float("nan"), 0
        else:
            epoch_idx = self.variant.epoch_indices(train_idx, targets, self.generator)
            augment = train.augment.model_dump(exclude={"enabled"}) if train.augment.enabled else None
            stats = train_one_epoch(
                self.model, self.optimizer, self.images, targets, epoch_idx, batch_size=train.batch_size,
                adapter=self.adapter, augment=augment, generator=self.generator, device=self.device, class_weights=weights,
                task=self.task, **self.precision_kwargs,
            )
            train_acc, train_loss, seconds, images_per_s = stats.acc, stats.loss, stats.seconds, stats.images_per_s
            epoch_images = stats.images  # what the variant's epoch visited (e.g. K·M images when balanced)
        val_logits, val_targets = self.validation_logits()
        val_acc, val_loss = self.task.accuracy_and_loss(val_logits, val_targets)
        return {
            "epoch": epoch, "round": round_no, "round_epoch": round_epoch, "train_size": len(train_idx), "epoch_images": epoch_images,
            "train_acc": train_acc, "train_loss": train_loss, "val_acc": val_acc, "val_loss": val_loss,
            **self.task.epoch_metrics(val_logits, val_targets),
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds, "train_images_per_s": images_per_s,
            **self.static, **count_parameters(self.model),
        }

    def final_measures(self) -> dict:
        """Measured once, after the last test evaluation of the trial."""
        test_idx, batch = self.split["test"], self.execution.eval_batch_size
        measures = measure_inference(self.model, self.images[test_idx[:batch]], adapter=self.adapter, device=self.device,
                                     batch_size=batch, **self.precision_kwargs)
        measures.update({f"backbone_{k}": v for k, v in backbone_parameter_counts(self.arm["backbone"], self.model).items()})
        return {**measures, FINAL_MARKER: True}


def _weights_here(payload: StudyPayload, backbone: str) -> str:
    """The weight file preflight resolved, or, on a node without it, a copy from the payload."""
    path = payload.weight_files[backbone]
    if Path(path).is_file() or backbone not in payload.weight_blobs:
        return path
    copy = Path(tempfile.gettempdir()) / "ferbench-weights" / f"{os.getpid()}-{Path(path).name}"
    atomic_write_bytes(copy, payload.weight_blobs[backbone])
    return str(copy)


def _build_trial(config: dict, payload: StudyPayload) -> _Trial:
    arm = config["arm"]
    # The arm's own spec: its values of the study's extra grid axes (``arm["settings"]``, e.g. train.lr) in their
    # sections, so training, freezing, weights and the variant all read the arm's value (``arm_spec_data``).
    spec = StudySpec.model_validate(arm_spec_data(payload.spec, arm.get("settings") or {}))
    train = spec.train
    execution = resolve_execution(train, spec.resources, _device(spec))
    apply_process_settings(execution)
    device = execution.device
    fold = payload.splits[arm.get("fold", 0)]
    info = get_backbone_info(arm["backbone"])
    input_size = resolve_input_size(spec, arm["backbone"], int(payload.images.shape[1]))
    torch.manual_seed(arm["seed"])
    weights = _weights_here(payload, arm["backbone"]) if arm["init"] == "pretrained" else None
    task = get_task(spec.task, spec)
    model = create_backbone(arm["backbone"], task.output_size(payload.class_names), weights_file=weights, head=train.head,
                            options=spec.model.backbone_options(), random_init=train.random_init).to(device)
    if weights and train.freeze.reinit_fc:
        # Transfer as the Moravčík thesis does it: the loaded convolutions kept, the fully connected layers replaced
        # by new ones, drawn after the arm's seed like any random layer (ferbench.backbones.conv_fc).
        reinit_fc(model, train.random_init)
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if weights and weights != payload.weight_files[arm["backbone"]]:
        Path(weights).unlink()  # the payload's copy, loaded
    return _Trial(
        spec=spec, arm=arm, payload=payload, model=model, optimizer=_make_optimizer(spec, model),
        generator=torch.Generator().manual_seed(arm["seed"]),
        initial_weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        # Labels stay on the CPU (the variants index and extend them there); with data_on_device
        # the uint8 images are copied to the GPU once and every batch is gathered there.
        images=as_tensor(payload.images).to(device) if execution.data_on_device else as_tensor(payload.images),
        labels=as_tensor(payload.labels),
        split={name: torch.from_numpy(np.asarray(idx, dtype=np.int64)) for name, idx in fold.items()},
        adapter=InputAdapter(input_size, info.in_chans, info.channel_order, info.mean, info.std), execution=execution,
        static={"input_size": input_size, "precision": execution.precision},
        task=task, variant=trainer_for(arm["variant"], spec),
    )


def run_trial(config: dict, payload: StudyPayload) -> None:
    """Train one arm, reporting every row (epoch 0, before training, to the last) with a checkpoint.

    The arm trains in rounds (``ferbench.harness.variants.trainer``): round 0 is ``train.epochs``
    epochs; the arm's variant decides at each round's end whether another follows (e.g. pseudo-labelling
    students) and may change what an epoch trains on. ``epoch`` counts rows across the whole trial;
    ``round`` and ``round_epoch`` (0 = the round's evaluation before training) place a row in its
    round, so MCR/MOFR are computable per round. A round's end tests the weights ``train.select``
    picks (``ferbench.harness.train.selection``). A ``tree:<name>`` arm has a trial of its own, built on this one's
    parts (``ferbench.harness.train.tree_trial``).
    """
    state, history = _restore(config)
    if is_final(history):  # finished (or stopped for good) before the driver recorded it: never re-run
        return
    train_rounds(_build_trial(config, payload), state, history)


def _test_round_end(trial: _Trial, rounds: RoundState, metrics: dict) -> None:
    """A round's end in an arm's own trial: test, let the variant decide what follows, and measure once finished."""
    scalars, per_class = _test_metrics(trial, trial.variant.test_round(rounds))
    metrics.update(scalars)
    trial.variant.end_round(trial, rounds, metrics, per_class)
    if rounds.finished:
        metrics.update(trial.final_measures())
        metrics.update(evaluate_extra_datasets(trial))


def train_rounds(trial: _Trial, state: dict | None, history: list[dict], first_epoch: int = 0, tags: dict | None = None,
                 extra_state: Callable[[], dict] | None = None,
                 round_end: Callable[[_Trial, RoundState, dict], None] = _test_round_end) -> bool:
    """Train ``trial`` from ``state`` (a checkpoint of it, or None: from ``first_epoch``) until its variant finishes,
    appending every row to ``history`` and checkpointing after each. ``tags`` are written into each row (a tree's
    node), ``extra_state`` into each checkpoint, and ``round_end`` tests the round's selected weights. False when
    the loss stopped being finite (the trial stops for good with a row saying why)."""
    tags = tags or {}
    rounds, epoch = RoundState(), first_epoch
    # train.select best_val: the round's best epoch so far, weights included (carried in every checkpoint).
    best = BestEpoch(trial.spec.train.select_metric) if trial.spec.train.select == "best_val" else None
    if state is not None:
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
        trial.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        epoch = state["epoch"] + 1
        rounds = _rounds_from(state.get("rounds"), epoch - first_epoch)
        trial.variant.load_state_dict(state.get("rounds") or {})
        best = BestEpoch.from_dict(state["round_best"]) if best is not None and state.get("round_best") else best
    # attempt_start_epoch > 0 marks epochs run after a retry resumed from a checkpoint (a tree sets it for its nodes).
    trial.static.setdefault("attempt_start_epoch", epoch)
    extra = extra_state or dict
    while not rounds.finished:
        if rounds.round > 0 and rounds.round_epoch == 0:
            trial.variant.start_round(trial, rounds.round)
        train_idx, targets = trial.variant.training_set(trial.labels, trial.split["train"])
        epoch_start = time.perf_counter()
        try:
            round_rows = [row for row in history if row.get("round", 0) == rounds.round and "val_loss" in row
                          and all(row.get(key) == value for key, value in tags.items())]
            metrics = {**trial.run_epoch(epoch, rounds.round, rounds.round_epoch, train_idx, targets, round_rows), **tags}
        except NonFiniteLoss as err:  # stopped for good (a retry would diverge again); the epochs before stay
            failure = {"epoch": epoch, "round": rounds.round, "round_epoch": rounds.round_epoch, **tags,
                       TRIAL_FAILED: err.at_epoch(epoch)}
            _save_checkpoint({**_training_state(trial, epoch, rounds, best), **extra()}, [*history, failure])
            return False
        if best is not None:
            best.offer(metrics, trial.model)
        round_epochs = trial.variant.round_epochs(rounds.round)
        if rounds.round_epoch < round_epochs:
            rounds.round_epoch += 1
        else:  # the round's end: test the selected epoch's weights (a next round, if any, starts from them)
            metrics["selected_epoch"] = round_epochs if best is None else best.restore(trial.model)
            round_end(trial, rounds, metrics)
            best = BestEpoch(best.metric) if best is not None else None  # a next round chooses among its own epochs
        metrics["epoch_wall_s"] = time.perf_counter() - epoch_start  # training, evaluation and test
        history.append(metrics)
        _save_checkpoint({**_training_state(trial, epoch, rounds, best), **extra()}, history)
        _maybe_inject_failure(trial.payload.fault_injection, trial.arm["arm_id"], epoch)
        epoch += 1
    return True


def _rounds_from(stored: dict | None, epoch: int) -> RoundState:
    """The checkpoint's round position (a checkpoint without one is from round 0 of an earlier version)."""
    if not stored:
        return RoundState(round_epoch=epoch)
    return RoundState(**{name: stored[name] for name in RoundState.__dataclass_fields__ if name in stored})


def _training_state(trial: _Trial, epoch: int, rounds: RoundState, best: BestEpoch | None) -> dict:
    """What a retry or ``--resume`` continues from, saved after every row."""
    return {
        "model": trial.model.state_dict(), "optimizer": trial.optimizer.state_dict(), "epoch": epoch,
        "generator": trial.generator.get_state(), "torch_rng": torch.get_rng_state(), "arm": trial.arm,
        "rounds": {**rounds.__dict__, **trial.variant.state_dict()}, **({"round_best": best.to_dict()} if best is not None else {}),
    }


def _test_metrics(trial: _Trial, round_no: int | None = None) -> tuple[dict, dict]:
    """Test evaluation, scored by the task. Its artifacts (predictions, per-class scores) are kept
    for the report, under the headline names or, when the variant keeps each round's, round ``round_no``'s."""
    test_idx, class_names = trial.split["test"], trial.payload.class_names
    logits = predict(trial.model, trial.images, test_idx, **trial.eval_kwargs)
    targets = trial.labels[test_idx]
    scalars, per_class = trial.task.scores(logits, targets, len(class_names), validation=trial.validation_logits)
    trial.task.write_test_artifacts(round_no, test_idx, targets, logits, class_names, per_class)
    return {f"test_{name}": value for name, value in scalars.items()}, per_class
