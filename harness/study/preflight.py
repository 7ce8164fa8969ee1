"""Preflight on the driver: everything knowable before the first trial, cheapest first.

Checks the machine's resources, the results storage, the data paths and the pretrained weights on
disk; only when those pass, loads the dataset, computes the splits and loads the weight files;
only when nothing failed, downloads missing weights and pretrains synth-identity weights. The
problems of a stage are reported together, in one message, before anything runs, and a stage's
problems stop the costlier stages after it: a GPU request on a laptop is refused in a second,
not after minutes of decoding and pretraining.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ferbench.backbones import create_backbone, resolve_pretrained
from ferbench.backbones.weights import WeightStatus, default_weights_dir
from ferbench.harness.data.checks import describe_missing, duplicate_training_indices
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.loaders import DataError, check_data_source, load_dataset
from ferbench.harness.spec import StudySpec
from ferbench.harness.data.splits import SplitError, class_shortfalls, make_splits, missing_classes, subject_mixing_warning
from ferbench.harness.data.unlabeled_pool import NOT_A_TARGET, UnlabeledPool
from ferbench.harness.study.cross_dataset import EvalSet, eval_source_problems, prepare_eval_sets
from ferbench.harness.study.tracking import tracker_problems
from ferbench.harness.study.transfer import arm_weights, freeze_problems
from ferbench.harness.tasks import get_task
from ferbench.harness.tree_spec import is_tree, tree_name
from ferbench.harness.variants import used_variants
from ferbench.harness.units import load_object

log = logging.getLogger(__name__)


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
    eval_sets: list[EvalSet] = field(default_factory=list)  # eval.datasets, in the training data's form, mapped per fold

    def training_arrays(self, task) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict[int, dict[str, np.ndarray]]]:
        """(images, targets, target names, splits) the trials see; ``task`` says what a target is (an emotion
        class index, or a row of 0/1 labels). An external pool follows the dataset's images, with the target
        ``NOT_A_TARGET`` (no label exists), and is every fold's ``unlabeled`` part."""
        dataset, pool = self.dataset, self.unlabeled_pool
        targets, names = task.targets(dataset)
        if pool is None:
            return dataset.images, targets, names, self.splits
        images = np.concatenate([dataset.images, pool.images])
        targets = np.concatenate([targets, np.full((len(pool), *targets.shape[1:]), NOT_A_TARGET, targets.dtype)])
        pool_idx = np.arange(len(dataset), len(images), dtype=np.int64)
        return images, targets, names, {fold: {**split, "unlabeled": pool_idx} for fold, split in self.splits.items()}

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

    def can_fetch(self, backbone: str, missing: WeightStatus) -> bool:
        """Whether ``fetch`` would try a download (answered without the network)."""
        from ferbench.backbones.download import weight_source

        return (self.allowed and missing.source == "missing" and not self.spec.weights.files.get(backbone)
                and weight_source(backbone) is not None)

    def fetch(self, backbone: str, missing: WeightStatus) -> WeightStatus:
        from ferbench.backbones.download import DownloadError, fetch_weights

        if not self.can_fetch(backbone, missing):
            return missing
        folder = Path(self.spec.weights.dir).expanduser() if self.spec.weights.dir else default_weights_dir()
        log.info("  weights: downloading %s into %s", backbone, folder)
        try:
            fetch_weights(backbone, folder, timeout_s=self.spec.weights.download_timeout, mirror=self.spec.weights.mirror)
        except (DownloadError, ValueError, OSError) as err:
            self.allowed = False
            reason = str(err).split(". Offline?")[0]  # the where-to-place advice is in the message already
            return replace(missing, message=f"{missing.message} (automatic download failed: {reason})")
        return resolve_pretrained(backbone, files=self.spec.weights.files, weights_dir=self.spec.weights.dir)


@dataclass
class WeightPlan:
    """The grid's pretrained weights as preflight's stages learn about them.

    ``found``: published weight files on disk, not loaded yet; ``downloadable``: missing ones a
    download may bring; ``problems``: backbone → why its pretrained arms cannot run; ``refused``: settings
    that cannot work, whatever ``run.allow_unavailable`` says (a ``weights.files`` arm that cannot be used:
    a typo, not weights absent offline); ``files`` / ``sources``: weights that load (or were pretrained), for
    the trials.
    """

    found: dict[str, WeightStatus] = field(default_factory=dict)
    downloadable: dict[str, WeightStatus] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def pretrained_backbones(spec: StudySpec) -> list[str]:
    return sorted({arm["backbone"] for arm in spec.arms() if arm["init"] == "pretrained"})


def locate_weights(spec: StudySpec, downloader: _Downloader) -> WeightPlan:
    """Stage 1: where each published weight the grid needs is, by file-system look-ups alone
    (nothing is downloaded or trained, no published file loaded; an arm of a finished experiment named in
    ``weights.files`` is read and its shapes checked, ``ferbench.harness.study.transfer``). Synth-identity
    weights are made in stage 3."""
    plan = WeightPlan()
    for backbone in pretrained_backbones(spec):
        if spec.weights.source_for(backbone) == "synth-identity":
            continue
        from_arm = arm_weights(spec, backbone)
        status = from_arm or resolve_pretrained(backbone, files=spec.weights.files, weights_dir=spec.weights.dir)
        if from_arm is not None and not from_arm.available:
            plan.refused.append(from_arm.message)
        elif status.available:
            plan.found[backbone] = status
        elif downloader.can_fetch(backbone, status):
            plan.downloadable[backbone] = status
        else:
            plan.problems[backbone] = status.message
    return plan


def load_weight_files(spec: StudySpec, plan: WeightPlan) -> None:
    """Stage 2 (and after downloads): each found weight file loaded once into its backbone; a file
    that exists but does not load would otherwise fail every trial later."""
    for backbone, status in sorted(plan.found.items()):
        if backbone in plan.files or backbone in plan.problems:
            continue
        try:
            create_backbone(backbone, num_classes=2, weights_file=status.path, options=spec.model.backbone_options())
        except Exception as err:
            plan.problems[backbone] = f"{backbone}: weights file {status.path} does not load: {err}"
            continue
        plan.files[backbone], plan.sources[backbone] = status.path, status.source


def download_weights(plan: WeightPlan, downloader: _Downloader) -> None:
    """Stage 3: download what ``locate_weights`` found missing but published; a failure is a problem."""
    for backbone, missing in plan.downloadable.items():
        status = downloader.fetch(backbone, missing)
        if status.available:
            plan.found[backbone] = status
        else:
            plan.problems[backbone] = status.message
    plan.downloadable = {}


def pretrain_synth_identity(spec: StudySpec, plan: WeightPlan, data_size: int) -> None:
    """Stage 3: the synth-identity weights of every backbone that uses them, pretrained once and
    cached (minutes per backbone on a slow machine, so only when nothing else failed)."""
    from ferbench.harness.train.synth_identity import synth_identity_weights
    from ferbench.harness.train.trial import resolve_input_size

    recipe = spec.weights.synth_identity.model_dump()
    for backbone in pretrained_backbones(spec):
        if spec.weights.source_for(backbone) == "synth-identity":
            path = synth_identity_weights(backbone, resolve_input_size(spec, backbone, data_size), recipe)
            plan.files[backbone], plan.sources[backbone] = str(path), "synth-identity"


def weight_problem_lines(spec: StudySpec, problems: dict[str, str]) -> list[str]:
    """The weight problems that stop the study, and what to do: all of them when no arm could run or
    ``run.allow_unavailable`` is false; none otherwise (those arms are recorded 'unavailable')."""
    if not problems:
        return []
    nothing_runs = all(arm["init"] == "pretrained" and arm["backbone"] in problems for arm in spec.arms())
    if not nothing_runs and spec.run.allow_unavailable:
        return []
    return [*problems.values(), (
        "every arm of the grid needs the missing weights above, so nothing could run: place them first"
        if nothing_runs else
        "run.allow_unavailable=false: fix the weights above, or pass --set run.allow_unavailable=true "
        "to record those arms as 'unavailable' and run the rest"
    )]


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
    return problems + tree_class_problems(spec, dataset.class_names)


def tree_class_problems(spec: StudySpec, class_names: tuple[str, ...]) -> list[str]:
    """A tree arm routes every image to one of the dataset's classes: its root's classes must be exactly those."""
    problems = []
    for name in dict.fromkeys(tree_name(b) for b in spec.grid.backbone if is_tree(b)):
        classes = spec.trees[name].layout().classes
        missing, unknown = sorted(set(class_names) - classes), sorted(classes - set(class_names))
        if missing or unknown:
            problems.append(
                f"trees.{name}: the tree's classes are not the dataset's ({', '.join(class_names)})"
                + (f"; no node leads to {', '.join(missing)}" if missing else "")
                + (f"; {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a class of the data" if unknown else "")
                + "; give the root's groups exactly the dataset's classes (data.drop_classes / data.class_map change those)")
    return problems


def check_local_resources(spec: StudySpec) -> list[str]:
    """A trial asking for more than a local machine has would wait forever; say so now.

    When attached to a cluster (``RAY_ADDRESS``, set by the engine for a recorded cluster too) the
    autoscaler may still add such nodes; ``RAY_ADDRESS=local`` is a private Ray on this machine.
    """
    if (os.environ.get("RAY_ADDRESS") or "local") != "local":
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


def check_data_paths(spec: StudySpec) -> list[str]:
    """Stage 1: the data options hold, and ``data.path``, each ``eval.datasets`` path and each used variant's inputs
    (e.g. ``pseudo_label.unlabeled_path``) exist and open; nothing is decoded."""
    problems = check_data_source(spec.data) + eval_source_problems(spec)
    for info in used_variants(spec.arms()):
        if info.check_inputs:
            problems += load_object(info.check_inputs)(spec)
    return problems


def prepare_data(spec: StudySpec) -> tuple[FerDataset | None, dict | None, UnlabeledPool | None, dict, list[str]]:
    """Stage 2: (dataset, splits, pool, notes, problems): the dataset decoded (or read from its
    cache), its classes and splits checked, a variant's unlabeled pool read."""
    problems: list[str] = []
    dataset = splits = pool = None
    notes: dict = {}
    try:
        dataset = load_dataset(spec.data)
        task = get_task(spec.task, spec)
        targets, target_names = task.targets(dataset)  # the dataset has what the task predicts
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
                log.warning("data: warning: %s", describe_missing(entry))
            for line in task.split_warnings(targets, target_names, splits):
                log.warning("data: warning: %s", line)
            if mixing := subject_mixing_warning(dataset, spec.split, splits):
                log.warning("data: warning: %s", mixing)
            pool = _unlabeled_pool(spec, dataset)
    except (DataError, SplitError, ValueError) as err:
        problems.append(str(err))
    except OSError as err:  # a path the loaders did not expect to fail; still one line naming it
        problems.append(os_error_line(err))
    if pool is not None:
        notes["unlabeled_pool"] = pool.notes
    return dataset, splits, pool, notes, problems


def run_preflight(spec: StudySpec) -> Preflight:
    """Everything knowable before the first trial, in stages of rising cost. Raises ``PreflightError``
    listing every problem of the first stage that has any; no costlier stage runs after it.

    1. Milliseconds to seconds: resources, results storage, data paths, published weights on disk (a
       ``weights.files`` arm's tested weights read and fitted), the freezing policy's fit to the backbones,
       the packages of run.loggers.
    2. The dataset decoded (or read from its cache), classes and splits checked; weight files loaded.
    3. Only when nothing failed: missing published weights downloaded, synth-identity weights pretrained.
    """
    downloader = _Downloader(spec)
    weights = locate_weights(spec, downloader)
    problems = check_storage_writable(spec) + check_local_resources(spec) + check_data_paths(spec) + tracker_problems(spec)
    problems += weights.refused + freeze_problems(spec) + weight_problem_lines(spec, weights.problems)
    if problems:
        raise PreflightError("\n".join(problems))

    dataset, splits, pool, notes, problems = prepare_data(spec)
    eval_sets, eval_problems = prepare_eval_sets(spec, dataset, splits) if dataset is not None else ([], [])
    problems += eval_problems
    load_weight_files(spec, weights)
    if not problems and not weight_problem_lines(spec, weights.problems):
        download_weights(weights, downloader)
        load_weight_files(spec, weights)
    if not problems and not weight_problem_lines(spec, weights.problems):
        pretrain_synth_identity(spec, weights, dataset.image_size[0])
    problems += weight_problem_lines(spec, weights.problems)
    if problems:
        raise PreflightError("\n".join(problems))

    arms = []
    for arm in spec.arms():
        pretrained = arm["init"] == "pretrained"
        missing = pretrained and arm["backbone"] in weights.problems
        arms.append({
            **arm,
            "status": "unavailable" if missing else "scheduled",
            "reason": weights.problems[arm["backbone"]] if missing else "",
            "weights_source": weights.sources.get(arm["backbone"], "") if pretrained else "",
        })
    return Preflight(dataset=dataset, splits=splits, arms=arms, weight_files=weights.files, weight_sources=weights.sources,
                     data_notes=notes, unlabeled_pool=pool, eval_sets=eval_sets)


def _unlabeled_pool(spec: StudySpec, dataset: FerDataset) -> UnlabeledPool | None:
    """Extra unlabeled images a used variant reads (``pseudo_label.unlabeled_path``), in the dataset's form."""
    for info in used_variants(spec.arms()):
        if info.unlabeled_pool and (pool := load_object(info.unlabeled_pool)(spec, dataset)) is not None:
            return pool
    return None
