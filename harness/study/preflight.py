"""Preflight on the driver: everything knowable before the first trial, checked at once.

Loads the dataset, computes the splits and resolves every pretrained weight the grid needs.
All problems are collected and reported together, in one message, before anything runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ferbench.backbones import create_backbone, resolve_pretrained
from ferbench.backbones.weights import WeightStatus, default_weights_dir
from ferbench.harness.data.checks import describe_missing, duplicate_training_indices
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.spec import StudySpec
from ferbench.harness.data.splits import SplitError, class_shortfalls, make_splits, missing_classes
from ferbench.harness.data.unlabeled_pool import UnlabeledPool, load_unlabeled_pool


class PreflightError(RuntimeError):
    """One or more problems that stop the study before it starts; ``str()`` lists them all."""


@dataclass
class Preflight:
    dataset: FerDataset
    splits: dict[int, dict[str, np.ndarray]]  # fold → train/val/test(/unlabeled) indices
    arms: list[dict]  # every grid arm, with "status": "scheduled" | "unavailable" and "reason"
    weight_files: dict[str, str] = field(default_factory=dict)
    weight_sources: dict[str, str] = field(default_factory=dict)
    data_notes: dict = field(default_factory=dict)  # what preflight changed in the data, for the report
    unlabeled_pool: UnlabeledPool | None = None  # pseudo_label.unlabeled_path, in the training data's form

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, np.ndarray]]]:
        """(images, labels, splits) the trials see. An external pool follows the dataset's images,
        with the label ``NOT_A_TARGET`` (no label exists), and is every fold's ``unlabeled`` part."""
        dataset, pool = self.dataset, self.unlabeled_pool
        if pool is None:
            return dataset.images, dataset.labels, self.splits
        from ferbench.harness.train.variants.pseudo_label import NOT_A_TARGET

        images = np.concatenate([dataset.images, pool.images])
        labels = np.concatenate([dataset.labels, np.full(len(pool), NOT_A_TARGET, dataset.labels.dtype)])
        pool_idx = np.arange(len(dataset), len(images), dtype=np.int64)
        return images, labels, {fold: {**split, "unlabeled": pool_idx} for fold, split in self.splits.items()}

    @property
    def runnable_arms(self) -> list[dict]:
        return [arm for arm in self.arms if arm["status"] == "scheduled"]


class _Downloader:
    """Preflight's last resolver step: download missing published weights when online.

    After the first failed download the machine is taken to be offline and nothing else is
    tried, so an offline preflight fails within one timeout, naming every missing file.
    """

    def __init__(self, spec: StudySpec):
        self.spec = spec
        offline = any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in ("FERBENCH_OFFLINE", "HF_HUB_OFFLINE"))
        self.allowed = spec.weights.download and not offline

    def fetch(self, backbone: str, missing: WeightStatus) -> WeightStatus:
        from ferbench.backbones.download import DownloadError, fetch_weights, weight_source

        if weight_source(backbone) is None or missing.source != "missing" or self.spec.weights.files.get(backbone):
            return missing
        folder = Path(self.spec.weights.dir).expanduser() if self.spec.weights.dir else default_weights_dir()
        print(f"  weights: downloading {backbone} into {folder}", file=sys.stderr, flush=True)
        try:
            fetch_weights(backbone, folder, timeout_s=self.spec.weights.download_timeout, mirror=self.spec.weights.mirror)
        except (DownloadError, ValueError, OSError) as err:
            self.allowed = False
            reason = str(err).split(". Offline?")[0]  # the where-to-place advice is in the message already
            return replace(missing, message=f"{missing.message} (automatic download failed: {reason})")
        return resolve_pretrained(backbone, files=self.spec.weights.files, weights_dir=self.spec.weights.dir)


def resolve_weights(spec: StudySpec, data_size: int, train_synth_identity: bool = True) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(files, sources, problems) for every backbone that has a pretrained arm. With
    ``train_synth_identity`` False, synth-identity weights are not resolved: preflight has already
    found a problem, and minutes of identity pretraining would only delay its message."""
    from ferbench.harness.train.synth_identity import synth_identity_weights
    from ferbench.harness.train.trial import resolve_input_size

    files, sources, problems = {}, {}, {}
    downloader = _Downloader(spec)
    needed = sorted({arm["backbone"] for arm in spec.arms() if arm["init"] == "pretrained"})
    for backbone in needed:
        if spec.weights.source_for(backbone) == "synth-identity":
            if not train_synth_identity:
                continue
            recipe = spec.weights.synth_identity.model_dump()
            path = synth_identity_weights(backbone, resolve_input_size(spec, backbone, data_size), recipe)
            files[backbone], sources[backbone] = str(path), "synth-identity"
            continue
        status = resolve_pretrained(backbone, files=spec.weights.files, weights_dir=spec.weights.dir)
        if not status.available and downloader.allowed:
            status = downloader.fetch(backbone, status)
        if not status.available:
            problems[backbone] = status.message
            continue
        try:  # a file that exists but does not load would otherwise fail every trial later
            create_backbone(backbone, num_classes=2, weights_file=status.path, options=spec.model.backbone_options())
        except Exception as err:
            problems[backbone] = f"{backbone}: weights file {status.path} does not load: {err}"
            continue
        files[backbone], sources[backbone] = status.path, status.source
    return files, sources, problems


def drop_training_duplicates(dataset: FerDataset, folds: dict[int, dict[str, np.ndarray]]) -> dict:
    """``data.drop_duplicates``: remove from train every image that is also in val or test, in
    place; returns how many were dropped per fold, for the report."""
    dropped = {}
    for fold, split in folds.items():
        duplicates = duplicate_training_indices(dataset, split)
        split["train"] = np.setdiff1d(split["train"], duplicates)
        dropped[str(fold)] = int(len(duplicates))
    return {"dropped_training_duplicates": dropped}


def check_splits(dataset: FerDataset, folds: dict[int, dict[str, np.ndarray]]) -> list[str]:
    """A split that leaves a part empty, or train without a class, fails; the fix is named."""
    problems = []
    for fold, split in folds.items():
        where = f"fold {fold}: " if len(folds) > 1 else ""
        for name, indices in split.items():
            if len(indices) == 0:
                problems.append(f"split: {where}the {name} part is empty; use more data or other split.* fractions")
        missing = [dataset.class_names[c] for c in np.flatnonzero(dataset.class_counts(split["train"]) == 0)]
        if missing:
            problems.append(
                f"split: {where}class(es) {', '.join(missing)} would have no training images; "
                "check the labels, or use fewer folds / another split.kind"
            )
    return problems


def check_storage_writable(spec: StudySpec) -> list[str]:
    """A local ``run.storage`` that cannot be written would fail only after Ray has started; say so now.

    Missing folders are created for the test and removed again, so a preflight that fails for
    another reason leaves nothing behind. Object storage (``s3://``) is checked by the engine.
    """
    from ferbench.harness.study.storage import is_remote

    if is_remote(spec.run.storage):
        return []
    root = Path(spec.run.storage).expanduser().absolute()
    fix = "choose another folder with --storage DIR"
    existing = root
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        return [f"run.storage: {root} cannot be created: {existing} is a broken symbolic link; {fix}"]
    if not existing.is_dir():
        what = root if existing == root else f"{root} cannot be created: {existing}"
        return [f"run.storage: {what} is a file, not a folder; {fix}"]
    created = [folder for folder in [root, *root.parents] if folder.is_relative_to(existing) and folder != existing]
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=root, prefix=".ferbench-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        return [f"run.storage: {root} is not writable ({err.strerror or type(err).__name__}); {fix}"]
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
    return []


def os_error_line(err: OSError) -> str:
    """An OSError from a user's path as one line naming the path."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}cannot be read ({err.strerror or err}); check that the path exists and is readable"


def class_problems(spec: StudySpec, dataset: FerDataset) -> list[str]:
    """Classes the study cannot score: every image unreadable (unless left out with data.drop_classes),
    or too few images for the split (unless split.allow_missing_classes)."""
    problems = []
    vanished = {name: n for name, n in dataset.meta.get("vanished_classes", {}).items() if name not in spec.data.drop_classes}
    used = "could be used (unreadable, or no face found)" if spec.data.face_detect else "could be read"
    for name, files in vanished.items():
        problems.append(
            f"data: class {name!r}: none of its {files} image file(s) {used}, so the "
            f"class would vanish from the study (`ferbench data inspect` lists the files and why); replace the files, or "
            f"leave the class out with --set data.drop_classes=[{name}]"
        )
    if not spec.split.allow_missing_classes:
        problems += class_shortfalls(dataset, spec.split)
    return problems


def check_local_resources(spec: StudySpec) -> list[str]:
    """A trial asking for more than a local machine has would wait forever; say so now.

    When attached to a cluster (``RAY_ADDRESS``) the autoscaler may still add such nodes.
    """
    if os.environ.get("RAY_ADDRESS"):
        return []
    import torch

    problems = []
    gpus = torch.cuda.device_count()
    if spec.resources.gpu > gpus:
        problems.append(
            f"resources.gpu: each trial asks for {spec.resources.gpu} GPU but this machine has {gpus}; "
            f"use --set resources.gpu=0 here, or submit the study to a GPU cluster"
        )
    cpus = os.cpu_count() or 1
    if spec.resources.cpu > cpus:
        problems.append(f"resources.cpu: each trial asks for {spec.resources.cpu} CPUs but this machine has {cpus}; use --set resources.cpu={cpus}")
    return problems


def run_preflight(spec: StudySpec) -> Preflight:
    problems: list[str] = check_storage_writable(spec) + check_local_resources(spec)
    dataset = splits = pool = None
    notes: dict = {}
    try:
        dataset = load_dataset(spec.data)
        too_small = class_problems(spec, dataset)
        problems += too_small
        if not too_small:
            splits = dict(zip(spec.split.fold_ids(), make_splits(dataset, spec.split)))
            if spec.data.drop_duplicates:
                notes = drop_training_duplicates(dataset, splits)
            problems += check_splits(dataset, splits)
            missing = missing_classes(dataset, splits)
            if missing:  # for the report's Data section
                notes["missing_classes"] = missing
            for entry in (e for e in missing if e["part"] != "train"):  # train: a problem above
                print(f"data: warning: {describe_missing(entry)}", file=sys.stderr)
            pool = _external_pool(spec, dataset)
    except (DataError, SplitError, ValueError) as err:
        problems.append(str(err))
    except OSError as err:  # a path the loaders did not expect to fail; still one line naming it
        problems.append(os_error_line(err))
    if pool is not None:
        notes["unlabeled_pool"] = pool.notes
    data_size = dataset.image_size[0] if dataset is not None else spec.data.image_size
    files, sources, weight_problems = resolve_weights(spec, data_size, train_synth_identity=not problems)
    nothing_runs = all(arm["init"] == "pretrained" and arm["backbone"] in weight_problems for arm in spec.arms())
    if weight_problems and (nothing_runs or not spec.run.allow_unavailable):
        problems += list(weight_problems.values())
        problems.append(
            "every arm of the grid needs the missing weights above, so nothing could run: place them first"
            if nothing_runs else
            "run.allow_unavailable=false: fix the weights above, or pass --set run.allow_unavailable=true "
            "to record those arms as 'unavailable' and run the rest"
        )
    if problems:
        raise PreflightError("\n".join(problems))
    arms = []
    for arm in spec.arms():
        pretrained = arm["init"] == "pretrained"
        missing = pretrained and arm["backbone"] in weight_problems
        arms.append({
            **arm,
            "status": "unavailable" if missing else "scheduled",
            "reason": weight_problems[arm["backbone"]] if missing else "",
            "weights_source": sources.get(arm["backbone"], "") if pretrained else "",
        })
    return Preflight(dataset=dataset, splits=splits, arms=arms, weight_files=files, weight_sources=sources, data_notes=notes,
                     unlabeled_pool=pool)


def _external_pool(spec: StudySpec, dataset: FerDataset) -> UnlabeledPool | None:
    """``pseudo_label.unlabeled_path`` read in the dataset's image form, when a pseudo_label arm uses it."""
    from ferbench.harness.variants.pseudo_label import uses_pseudo_label

    if spec.pseudo_label.unlabeled_path is None or not any(uses_pseudo_label(a["variant"]) for a in spec.arms()):
        return None
    return load_unlabeled_pool(spec.pseudo_label.unlabeled_path, image_shape=dataset.images.shape[1:], strict=spec.data.strict)
