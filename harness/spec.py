"""Study specification: YAML study files plus ``--set key=value`` overrides, validated up front.

A study is a grid (backbone × init × variant × seed, and any setting an arm trains with as an
extra axis, e.g. ``grid.train.lr``) over one dataset with one training recipe. Everything is validated here, before Ray starts, so that a typo costs a second,
not a cluster-hour. Errors are reported as one line per problem naming the key, the bad
value and what is allowed.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ferbench.harness import tasks, variants
from ferbench.harness.strict_model import StrictModel as _Strict
from ferbench.harness.tree_spec import TreeSpec, is_tree, node_spec_data, tree_name

BUILTIN_STUDY_PACKAGE = "ferbench.harness.study.studies"
INITS = ("random", "pretrained")
GRID_AXES = ("backbone", "init", "variant", "seed")
# Sections whose settings may be extra grid axes (``grid.train.lr: [1e-4, 3e-4]``): what a trial reads from its own
# copy of the spec. The registered variants' sections (pseudo_label, balanced, …) are added to these.
AXIS_SECTIONS = ("train", "model")
# Keys that are not arm settings, and why: the study's data, splits, weights and resources are prepared once,
# before any trial (preflight), and the rest describe the whole study or its report.
NOT_AXES = {
    "grid": "the grid's own axes are written grid.backbone, grid.init, grid.variant, grid.seed; an extra axis is a "
            "setting outside grid, e.g. grid.train.lr",
    "data": "the dataset is read once per study, before any trial; run one study per dataset setting",
    "split": "the splits are made once per study, before any trial (k-fold studies have their fold axis: split.folds)",
    "weights": "pretrained weights are resolved once per backbone, before any trial; run one study per weights setting",
    "resources": "every trial of a study reserves the same CPUs and GPUs",
    "run": "a setting of the whole run (storage, name, retries), not of an arm",
    "report": "a setting of the report, not of an arm",
    "study": "the study's name is one per study",
    "description": "the study's description is one per study",
    "task": "what the study predicts is one per study (its report's sections depend on it)",
    "eval": "the extra test sets are read and their labels mapped once per study, before any trial",
}
NOT_AXIS_PATHS = {
    "pseudo_label.unlabeled_path": "the unlabeled pool is read once per study, before any trial",
}


class SpecError(ValueError):
    """A study spec is invalid; ``str()`` is the user-facing message (one line per problem)."""


class DataSpec(_Strict):
    format: Literal["synthfer", "fer2013", "fer2013_folders", "rafdb", "ckplus", "folder", "disfa", "multilabel_csv", "auto"] = Field(
        "synthfer", description="dataset layout; 'auto' detects it from data.path and says which it found"
    )
    path: str | None = Field(None, description="file or folder of a real dataset")
    ferplus_labels: str | None = Field(None, description="FER2013: fer2013new.csv; majority-vote FERPlus labels, not-a-face rows dropped")
    contempt: str = Field("keep", description="CK+: 'keep' (an 8th class), 'drop', or a class to map it to (e.g. happy)")
    ckplus_frames: Literal["all", "peak"] = Field(
        "all", description="CK+: 'all' images (981 in the 48×48 set, 3 frames per sequence), or 'peak': the last frame of "
        "each sequence (S<subject>_<sequence>, 327 in the 48×48 set; the thesis's peak expressions)"
    )
    class_map: dict[str, str] = Field(default_factory=dict, description="folder class name → canonical class name")
    drop_classes: list[str] = Field(
        default_factory=list, description="classes left out of the study (e.g. [disgust]); listed in the report's Data section"
    )
    strict: bool = Field(False, description="fail on the first unreadable image instead of skipping and reporting it")
    cache: bool = Field(True, description="reuse decoded arrays from the dataset cache")
    drop_duplicates: bool = Field(False, description="drop training images that are exact copies of val/test images")
    face_detect: bool = Field(False, description="detect and crop the largest face (OpenCV, offline) before caching")
    face_size: int = Field(48, ge=16, le=512, description="face_detect: side of the cropped face in pixels")
    num_images: int = Field(5000, ge=7, description="SynthFER: images to generate")
    image_size: int = Field(48, ge=16, le=256, description="SynthFER: side length in pixels")
    label_noise: float = Field(0.05, ge=0.0, lt=1.0, description="SynthFER: fraction of flipped labels")
    seed: int = Field(0, description="SynthFER: generation seed")
    action_units: list[int] = Field(
        [1, 2, 4, 6, 9, 12, 25, 26], min_length=1,
        description="DISFA: the AUs kept, as label columns in this order (of 1 2 4 5 6 9 12 15 17 20 25 26; 12 or AU12)",
    )
    au_threshold: int = Field(2, ge=1, le=5, description="DISFA: an AU is present at intensity >= this (0-5; 2 is the common protocol)")
    frame_step: int = Field(1, ge=1, description="DISFA: keep every n-th frame (frames 1, 1+n, 1+2n, ...)")
    frame_size: int = Field(
        128, ge=16, le=1024, description="DISFA without face_detect: the central square of each frame resized to this side "
        "(RGB; all 130,815 frames at 128 take 6.4 GB, so raise frame_step for larger sizes)"
    )
    image_column: str = Field("image", description="multilabel_csv: the image path column (relative to the CSV's folder, or absolute)")
    label_columns: list[str] | None = Field(
        None, min_length=1, description="multilabel_csv: the 0/1 label columns (default: every column but the image and subject ones)"
    )
    subject_column: str | None = Field(None, description="multilabel_csv: the subject column (default: 'subject' when there is one)")

    @field_validator("drop_classes", "label_columns", mode="before")
    @classmethod
    def _one_class_as_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("action_units", mode="before")
    @classmethod
    def _au_numbers(cls, value: Any) -> Any:
        """AU12 and au12 mean 12; one AU alone is a list of one."""
        values = value if isinstance(value, list) else [value]
        return [re.sub(r"(?i)^au", "", item.strip()) if isinstance(item, str) else item for item in values]

    @field_validator("action_units")
    @classmethod
    def _distinct_positive_aus(cls, numbers: list[int]) -> list[int]:
        for index, number in enumerate(numbers):
            if number < 1:
                raise ValueError(f"data.action_units.{index}: {number} is not an AU number (1, 2, 4, …)")
        doubled = sorted({number for number in numbers if numbers.count(number) > 1})
        if doubled:
            raise ValueError(f"data.action_units: {', '.join(map(str, doubled))} listed twice")
        return numbers

    @field_validator("drop_classes")
    @classmethod
    def _known_drop_classes(cls, names: list[str]) -> list[str]:
        """Canonical names (synonyms such as 'anger' accepted); a typo would otherwise drop nothing."""
        from ferbench.harness.data.formats.common import CLASS_LIST, known_class

        canonical = []
        for index, name in enumerate(names):
            found = known_class(str(name))
            if found is None:
                raise ValueError(f"data.drop_classes.{index}: {name!r} is not a class; use one of {CLASS_LIST}")
            if found in canonical:
                raise ValueError(f"data.drop_classes: {name!r} is listed twice")
            canonical.append(found)
        return canonical


class SplitSpec(_Strict):
    kind: Literal["stratified", "official", "subject_kfold", "stratified_kfold"] = Field(
        "stratified", description="stratified ratios, the dataset's official split, subject-exclusive k-fold, or plain "
        "stratified k-fold (images of one subject may sit on both sides)"
    )
    ratios: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="stratified: train/val/test fractions")
    seed: int = Field(42, description="random_state of every random cut")
    test: Literal["PrivateTest", "PublicTest"] = Field(
        "PrivateTest", description="official FER2013: the Usage reported as test; the other one is val"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="official splits without val (RAF-DB) and k-fold: share of train cut off as val")
    unlabeled_fraction: float = Field(0.0, ge=0, lt=1, description="share of train cut off first as 'unlabeled' (Arsirii: 0.1)")
    k: int = Field(10, ge=2, description="subject_kfold, stratified_kfold: number of folds (the thesis: 5, 8, 10)")
    folds: list[int] | None = Field(None, description="subject_kfold, stratified_kfold: folds to run (default: all k)")
    allow_missing_classes: bool = Field(
        False, description="run even when a class is too small for every part of the split (its val/test metrics are "
        "then undefined; the report's Data section lists it) instead of stopping in preflight"
    )

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, ratios: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive fractions summing to 1, got {list(ratios)}")
        return ratios

    @property
    def kfold(self) -> bool:
        """A k-fold kind: its arms get a ``fold`` axis and its spreads the corrected resampled t."""
        return self.kind in ("subject_kfold", "stratified_kfold")

    @property
    def ignores_subjects(self) -> bool:
        """Cut by label alone: with subject ids in the data, one subject's images can sit on both sides."""
        return self.kind in ("stratified", "stratified_kfold")

    def fold_ids(self) -> list[int]:
        """The folds a study runs: ``folds`` (or all ``k``) for a k-fold kind, else the single fold 0."""
        if not self.kfold:
            return [0]
        return list(self.folds) if self.folds is not None else list(range(self.k))

    @model_validator(mode="after")
    def _folds_within_k(self) -> "SplitSpec":
        bad = [f for f in self.folds or [] if not 0 <= f < self.k]
        if bad:
            raise ValueError(f"split.folds: {bad} outside 0..{self.k - 1} (split.k = {self.k})")
        return self


class GridSpec(_Strict):
    """The study's arms: backbone × init × variant × seed, and any extra axes over the arms' settings.

    An extra axis is a setting's dotted path with a list of values (``train.lr: [1e-4, 3e-4]``), written
    nested (``train: {lr: [...]}``) or dotted; it is kept as an extra key under its dotted path, so the
    stored spec reads back as written and a grid without extra axes is stored as before.
    """

    model_config = ConfigDict(extra="allow")

    backbone: list[str] = Field(min_length=1)
    init: list[Literal["random", "pretrained"]] = Field(["random"], min_length=1)
    variant: list[str] = Field(
        [variants.REFERENCE], min_length=1,
        description="training variants (ferbench.harness.variants); '+' combines them, e.g. pseudo_label+balanced",
    )
    seed: list[int] = Field([0], min_length=1)
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="partial arms to leave out")

    @field_validator("backbone", "init", "variant", "seed")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @field_validator("variant")
    @classmethod
    def _registered_variants(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                variants.parse_combination(value)
            except ValueError as err:
                raise ValueError(str(err)) from None
        return values

    @field_validator("backbone")
    @classmethod
    def _known_backbones(cls, names: list[str]) -> list[str]:
        from ferbench.backbones import is_known_backbone, list_backbones
        from ferbench.backbones.registry import ALLOWED_FORMS

        problems = [
            f"grid.backbone.{index}: unknown backbone {name!r}; allowed: {', '.join(list_backbones())} or {ALLOWED_FORMS}"
            for index, name in enumerate(names)
            if not is_known_backbone(name) and not is_tree(name)
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return names

    @model_validator(mode="before")
    @classmethod
    def _dotted_axes(cls, data: Any) -> Any:
        """Extra axes (and exclude rules naming them) under their dotted paths, however they were written."""
        if not isinstance(data, dict):
            return data
        fields = {key: value for key, value in data.items() if key in cls.model_fields}
        axes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls.model_fields:
                axes.update(_dotted(str(key), value))  # a later spelling wins: --set after the study file's
        problems = [_axis_list_problem(path, values) for path, values in axes.items()]
        problems = [problem for problem in problems if problem]
        if problems:
            raise ValueError("\n".join(problems))
        if isinstance(fields.get("exclude"), list):
            fields["exclude"] = [_flat_rule(rule) for rule in fields["exclude"]]
        return {**fields, **axes}

    @property
    def axes(self) -> dict[str, list[Any]]:
        """The extra axes: dotted setting path → its values, in the order written (empty for a plain grid)."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _axes_and_rules(self) -> "GridSpec":
        """Each extra axis is a setting an arm can change, each value valid for that setting (normalised,
        e.g. "1e-4" → 0.0001, so exclude rules and arm names compare values, not spellings); each exclude
        rule names axes of this grid."""
        problems: list[str] = []
        extra = self.model_extra or {}
        for path, values in list(extra.items()):
            located = _axis_field(path)
            if isinstance(located, str):
                problems.append(located)
                continue
            checked = [_axis_value(path, located, value, f"grid.{path}.{index}") for index, value in enumerate(values)]
            problems += [problem for _, problem in checked if problem]
            if any(problem for _, problem in checked):
                continue
            normalised = [value for value, _ in checked]
            if len({repr(v) for v in normalised}) != len(normalised):
                problems.append(f"grid.{path}: values must be unique, got {values}")
            elif len({_value_text(v) for v in normalised}) != len(normalised):
                problems.append(f"grid.{path}: values {values} give the same arm name; use values that differ in "
                                "letters or digits")
            extra[path] = normalised
        names = [*GRID_AXES, *extra]
        for number, rule in enumerate(self.exclude):
            if not rule or set(rule) - set(names):
                problems.append(f"grid.exclude.{number}: each rule names grid axes {names}, got {rule}")
                continue
            for path in set(rule) & set(extra):
                located = _axis_field(path)
                if not isinstance(located, str):
                    rule[path], problem = _axis_value(path, located, rule[path], f"grid.exclude.{number}.{path}")
                    problems += [problem] if problem else []
        if problems:
            raise ValueError("\n".join(problems))
        return self


class AugmentSpec(_Strict):
    enabled: bool = True
    hflip: bool = True
    rotation_deg: float = Field(10.0, ge=0, le=180)
    zoom: float = Field(0.1, ge=0, lt=1, description="scale drawn from [1-zoom, 1+zoom]")
    translate: float = Field(0.1, ge=0, lt=1, description="shift as a fraction of the image side")
    shear_deg: float = Field(0.0, ge=0, le=60)


class FreezeSpec(_Strict):
    policy: Literal["none", "last_k", "keras_last_k", "head_only", "fc_only", "two_stage"] = Field(
        "none", description="which layers train; see backbones/freezing.py for the definition of a layer. head_only: the "
        "head alone (under train.head=linear the output layer: Moravčík's 'retrain only the output layer'); fc_only: the "
        "fully connected layers (hidden dense + output), convolutions frozen (Moravčík's transfer; backbones with that "
        "split only: backbones/conv_fc.py)"
    )
    k: int = Field(4, ge=0, description="last_k: trunk layers that train; keras_last_k: Keras layers after "
                   "excluding the last one (Smelyakov: 4)")
    unfreeze_epoch: int = Field(1, ge=1, description="two_stage: first fine-tuning epoch (with unfreeze_on=val_plateau: "
                                "the latest one)")
    unfreeze_lr_factor: float = Field(0.1, gt=0, description="two_stage: learning-rate factor after unfreezing")
    unfreeze_on: Literal["epoch", "val_plateau"] = Field(
        "epoch", description="two_stage: fine-tune from unfreeze_epoch, or once val_loss has not improved for patience "
        "epochs of head training (Arsirii 2023: until the validation error stops improving)"
    )
    patience: int = Field(1, ge=1, description="two_stage with unfreeze_on=val_plateau: epochs without a lower val_loss")
    unfreeze_k: int | None = Field(None, ge=1, description="two_stage: trunk layers that fine-tune (the last k), or "
                                   "null: all of them")
    reinit_fc: bool = Field(
        False, description="pretrained arms: re-draw the fully connected layers (hidden dense + output) after the weights "
        "load, as new layers (train.random_init's initialiser), keeping the convolutions (Moravčík: 'replace last fully "
        "connected layers with new ones'); with policy fc_only or none"
    )

    @model_validator(mode="after")
    def _redrawn_layers_train(self) -> "FreezeSpec":
        """Re-drawn layers that stayed frozen would be random features, not a transfer: refuse the policies that freeze them."""
        if self.reinit_fc and self.policy not in ("fc_only", "none"):
            raise ValueError(f"train.freeze.reinit_fc: policy {self.policy} keeps the re-drawn fully connected layers (or "
                             "some of them) frozen; use train.freeze.policy=fc_only (or none), or reinit_fc=false")
        return self


class TrainSpec(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="evaluation batch; auto = 256 on CPU, 1024 on CUDA"
    )
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    input_size: int | Literal["native", "data"] = Field(
        "native", description="'native' = the backbone's own size, 'data' = the images' size, or pixels"
    )
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    head: Literal["linear", "arsirii_pl", "arsirii_au"] = Field(
        "linear", description="linear (Smelyakov), arsirii_pl (pseudo-labelling conv head), arsirii_au (GAP-BN-ReLU-Dropout)"
    )
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    random_init: Literal["torch", "keras"] = Field(
        "torch", description="weights no file provides: each library's own initialiser, or Keras' (glorot-uniform "
        "kernels, zero biases, BatchNorm 1/0; the whole network of random arms, the head of pretrained ones)"
    )
    select: Literal["last", "best_val"] = Field(
        "last", description="weights tested at a round's end (and, for pseudo_label, predicting the pool and starting the "
        "student): the last epoch's, or the epoch with the best select_metric on val (Keras ModelCheckpoint save_best_only)"
    )
    select_metric: Literal["val_acc", "val_loss", "val_f1_macro"] = Field(
        "val_acc", description="best_val: highest val_acc or val_f1_macro (task multilabel), or lowest val_loss; ties → the "
        "earlier epoch; epoch 0 never"
    )
    loss: Literal["auto", "cross_entropy", "bce", "bce_weighted", "lsep", "lpr", "lpr_macro"] = Field(
        "auto", description="the task's loss: classification cross_entropy; multilabel bce, bce_weighted (positives weighted "
        "by negatives/positives per label), lsep (log-sum-exp pairwise), lpr (1 − precision·recall, soft counts pooled "
        "over the batch's images and labels) or lpr_macro (per label, averaged); auto = cross_entropy / bce"
    )
    deterministic: bool | Literal["auto"] = Field(
        "auto", description="deterministic kernels (identical reruns); auto = on for CPU, off on CUDA"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="autocast precision; auto = bf16 on CUDA, fp32 on CPU")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels_last memory format; auto = on for CUDA")
    cudnn_benchmark: bool | Literal["auto"] = Field(
        "auto", description="cuDNN autotuning; auto = on for CUDA unless deterministic"
    )
    data_on_device: bool | Literal["auto"] = Field(
        "auto", description="copy the uint8 dataset to the GPU once (batches, augmentation and resizing stay there); auto = on for CUDA"
    )

    @model_validator(mode="after")
    def _benchmark_needs_nondeterminism(self) -> "TrainSpec":
        if self.deterministic is True and self.cudnn_benchmark is True:
            raise ValueError(
                "train.cudnn_benchmark=true picks kernels by timing, so reruns can differ, but train.deterministic=true "
                "asks for identical reruns; set one of them to false (or auto)"
            )
        return self

    @field_validator("input_size")
    @classmethod
    def _input_size_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 16 <= value <= 1024:
            raise ValueError(f"must be between 16 and 1024 pixels, 'native' or 'data', got {value}")
        return value


class ModelSpec(_Strict):
    """What the backbones end with (``backbones.BackboneOptions``); the defaults are deepface's and timm's today."""

    vggface_descriptor: Literal["fc7", "fc8"] = Field(
        "fc7", description="VGG-Face ends at ReLU(fc7), 4,096-d (deepface now), or at fc8 flattened, 2,622-d (deepface 2022, Smelyakov)"
    )
    openface_l2_norm: bool = Field(
        True, description="OpenFace ends with its L2-normalised embedding, or at Dense(128) without it (Smelyakov)"
    )
    resnet_mobilenet_final_relu: Literal["keep", "drop"] = Field(
        "keep", description="resnet50 and mobilenet_v1 end with their last ReLU (timm), or drop it: Keras' conv5_block3_out / "
        "conv_pw_13_relu, 'the last layer excluded' (Smelyakov); no effect on other backbones"
    )
    moravcik_blocks: int = Field(4, ge=1, le=4, description="moravcik_final: its convolution blocks (the thesis: 4; the "
                                 "networks of its decision tree: 2 or 3)")

    def backbone_options(self) -> "BackboneOptions":  # noqa: F821 (imported inside: backbones pulls in torch)
        from ferbench.backbones.registry import BackboneOptions

        return BackboneOptions(**self.model_dump())


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0, description="CPUs per trial (also torch threads)")
    gpu: float = Field(0, ge=0, description="GPUs per trial; fractions share one GPU")


TrackerName = Literal["mlflow", "wandb"]


class MlflowRunSpec(_Strict):
    """run.loggers: mlflow. Credentials come only from the environment (MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), never from the spec."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else sqlite:///<run.storage>/mlflow.db"
    )
    experiment: str | None = Field(None, description="MLflow experiment the arms' runs go to; default: the study name")

    @field_validator("tracking_uri")
    @classmethod
    def _credentials_elsewhere(cls, value: str | None) -> str | None:
        """The spec is stored with the results (spec.yaml, the manifest): a password in the URI would be too."""
        from urllib.parse import urlsplit

        password = urlsplit(value).password if value else None
        if password is not None:
            masked = value.replace(f":{password}@", ":***@", 1)
            raise ValueError(f"got {masked}: a password in the URI would be stored with the results; give credentials "
                             "in the environment instead: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
                             "MLFLOW_TRACKING_TOKEN")
        return value


class WandbRunSpec(_Strict):
    """run.loggers: wandb. The API key comes only from the environment (WANDB_API_KEY) or `wandb login`."""

    project: str | None = Field(None, description="W&B project; default: the study name")
    entity: str | None = Field(None, description="W&B team or user; default: WANDB_ENTITY, else your default entity")
    group: str | None = Field(None, description="W&B group of the arms' runs; default: the experiment name")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (uploaded later with `wandb sync`) or disabled; default: WANDB_MODE, else online"
    )


class RunSpec(_Strict):
    storage: str = Field("ferbench_results", description="results root: a directory, or s3://BUCKET/PREFIX")
    s3_endpoint: str | None = Field(
        None, description="endpoint URL of an S3-compatible server (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL or AWS)"
    )
    shared_storage: bool = Field(
        False, description="vouch that run.storage is a filesystem every node mounts (when not recognised as one)"
    )
    name: str | None = Field(None, description="experiment name; default <study>-<timestamp>")
    max_failures: int = Field(2, ge=0, description="retries per trial, each resuming from its checkpoint")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept per trial")
    allow_unavailable: bool = Field(
        False, description="record arms whose pretrained weights are missing as 'unavailable' instead of stopping"
    )
    max_concurrent: int | None = Field(None, ge=1, description="trials running at once (default: as resources allow)")
    reuse_workers: bool = Field(
        True, description="run one trial after another in the same Ray worker process, skipping a process start and "
        "the torch/timm imports per trial (Tune's reuse_actors)"
    )
    dashboard: bool = Field(
        False, description="start Ray's dashboard with a local Ray (as --verbose does; needs ray[default]: pip install "
        "'ferbench[cluster]'); off by default, so that Ray's daemons leave the CPU to the trials"
    )
    loggers: list[TrackerName] = Field(
        default_factory=list, description="experiment trackers that get one run per arm with its parameters and every "
        "epoch's metrics: mlflow, wandb (TensorBoard files are written in each trial folder regardless)"
    )
    mlflow: MlflowRunSpec = Field(default_factory=MlflowRunSpec)
    wandb: WandbRunSpec = Field(default_factory=WandbRunSpec)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        """The experiment folder's name under run.storage: one plain folder name, never a path."""
        if value is None:
            return value
        allowed = "a plain folder name (no '/' or '\\', not starting with '.'), e.g. --set run.name=fer2013-resnet50"
        if not value.strip():
            raise ValueError(f"run.name: an empty name is not a folder; use {allowed}")
        if "/" in value or "\\" in value or "\0" in value:
            raise ValueError(f"run.name: {value!r} is a path, which would write outside run.storage; use {allowed}")
        if value.startswith("."):
            raise ValueError(f"run.name: {value!r} starts with '.' (hidden, or a parent folder); use {allowed}")
        if any(ord(char) < 32 for char in value):
            raise ValueError(f"run.name: {value!r} holds control characters; use {allowed}")
        return value

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if "://" in value and not (value.startswith("s3://") and len(value) > len("s3://")):
            raise ValueError("must be a folder or s3://BUCKET/PREFIX (any S3-compatible server: set run.s3_endpoint)")
        return value


PretrainedSource = Literal["published", "synth-identity"]


class SynthIdentitySpec(_Strict):
    """Recipe of the offline ``synth-identity`` pretraining (identity classification on SynthFER)."""

    num_images: int = Field(6000, ge=100)
    num_identities: int = Field(100, ge=2)
    image_size: int = Field(48, ge=16, le=256)
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=2)
    seed: int = Field(1_000_003, description="a SynthFER seed other than the study's: other images, other people")


class WeightsSpec(_Strict):
    dir: str | None = Field(None, description="folder searched for <backbone>.safetensors|.pth files")
    files: dict[str, str] = Field(
        default_factory=dict, description="backbone name → weight file, or an arm of a finished experiment, "
        "EXPERIMENT_DIR/ARM_ID (its tested weights, output layer excepted; harness/study/transfer.py)"
    )
    source: PretrainedSource = Field(
        "published", description="where pretrained arms get weights: the published ones, or offline synth-identity"
    )
    sources: dict[str, PretrainedSource] = Field(default_factory=dict, description="per-backbone override of source")
    synth_identity: SynthIdentitySpec = Field(default_factory=SynthIdentitySpec)
    download: bool = Field(
        True, description="preflight downloads missing published weights into the weights folder "
        "(never with FERBENCH_OFFLINE=1 or HF_HUB_OFFLINE=1)"
    )
    download_timeout: float = Field(20.0, gt=0, description="seconds to connect or stall per download")
    mirror: str | None = Field(None, description="download URL/<file name> instead of the published sources")

    def source_for(self, backbone: str) -> str:
        return self.sources.get(backbone, self.source)


class ReportSpec(_Strict):
    window: int = Field(5, ge=1, description="epochs per MCR / MOFR window")
    samples_per_class: int = Field(2, ge=0, description="test images per class shown with each model's predictions (0: none)")


class MultilabelSpec(_Strict):
    threshold: float | Literal["val_f1"] = Field(
        0.5, description="task multilabel: the decision threshold of every label, or val_f1: per label, the threshold "
        "maximising F1 on validation, then applied unchanged to test"
    )

    @field_validator("threshold")
    @classmethod
    def _inside_unit_interval(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value < 1:
            raise ValueError(f"{value} is not a probability strictly between 0 and 1; e.g. 0.5, or val_f1")
        return value


class MassCentreSpec(_Strict):
    """How eval.datasets.*.unmapped: mass_centre labels images (the Moravčík thesis, §6.4.1–6.4.2)."""

    distance: Literal["histogram", "pixel"] = Field(
        "histogram", description="histogram: the sum of absolute differences between two images' 256-bin intensity "
        "histograms, as frequencies (all channels pooled); pixel: the sum of absolute pixel-by-pixel differences"
    )
    remap: Literal["unmapped", "all"] = Field(
        "unmapped", description="unmapped: only images whose class is no training class (after map) go to the nearest "
        "mass centre, the others keep their class (the thesis's 'keep the first 6 labels untouched'); all: every image "
        "is re-labelled by its nearest mass centre (the thesis's Fig. 6.10)"
    )
    max_images: int = Field(
        1000, ge=2, description="per training class, the most images (a sample drawn with split.seed) among which its "
        "mass centre is searched: the search compares every pair, so its cost grows with the square of this"
    )


class EvalDatasetSpec(_Strict):
    """A dataset every trained arm is tested on besides the test split, its classes mapped to the training data's."""

    name: str = Field(description="short name of the dataset (letters, digits, - and _) in tables and metric names "
                      "(cross_<name>_acc); unique within the study")
    data: DataSpec = Field(description="the dataset, as the study's data section describes one (format, path, contempt, "
                           "ckplus_frames, class_map, face_detect, ...); its images are brought to the training data's "
                           "size and channels")
    map: dict[str, str] = Field(
        default_factory=dict, description="this dataset's class → the training class it counts as, applied first "
        "(e.g. {contempt: happy}); classes not named keep their own name"
    )
    unmapped: Literal["drop", "mass_centre"] = Field(
        "drop", description="images whose class (after map) is no training class: drop them, or give them the class "
        "of the nearest mass centre (mass_centre)"
    )
    mass_centre: MassCentreSpec = Field(default_factory=MassCentreSpec)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", value):
            raise ValueError(f"not a plain name, got {value!r}: use up to 40 letters, digits, - and _ (e.g. ckplus), "
                             "since it names table rows and the metrics cross_<name>_acc")
        return value

    @field_validator("map")
    @classmethod
    def _class_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        """Canonical class names on both sides (synonyms such as 'anger' accepted); a typo would map nothing."""
        from ferbench.harness.data.formats.common import CLASS_LIST, known_class

        canonical = {}
        for key, value in mapping.items():
            source, target = known_class(str(key)), known_class(str(value))
            for name, found in ((key, source), (value, target)):
                if found is None:
                    raise ValueError(f"{name!r} is not a class; use one of {CLASS_LIST}")
            canonical[source] = target
        return canonical

    @field_validator("data")
    @classmethod
    def _emotion_labels(cls, data: DataSpec) -> DataSpec:
        if data.format in ("disfa", "multilabel_csv"):
            raise ValueError(f"format: got {data.format}, which has no emotion classes to test on; give a dataset with "
                             "emotion labels (ckplus, fer2013, rafdb, folder, ...)")
        return data

    @model_validator(mode="after")
    def _mass_centre_used(self) -> "EvalDatasetSpec":
        """mass_centre settings that would be ignored, or a map that remap: all would ignore, are refused."""
        if self.unmapped == "drop" and self.mass_centre != MassCentreSpec():
            raise ValueError("mass_centre: used only with unmapped: mass_centre, got unmapped: drop; set unmapped: "
                             "mass_centre, or remove mass_centre")
        if self.unmapped == "mass_centre" and self.mass_centre.remap == "all" and self.map:
            raise ValueError(f"map: not used with mass_centre.remap: all (every image is re-labelled by its nearest mass "
                             f"centre), got {self.map}; remove map, or use remap: unmapped")
        return self


class EvalSpec(_Strict):
    """Extra test sets (Moravčík's cross-dataset evaluation): every trained arm is also scored on each of them."""

    datasets: list[EvalDatasetSpec] = Field(
        default_factory=list, description="datasets each trained arm is tested on after its test split "
        "(tables/cross_dataset.csv and the report's Cross-dataset evaluation section)"
    )

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, datasets: list[EvalDatasetSpec]) -> list[EvalDatasetSpec]:
        names = [dataset.name for dataset in datasets]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"eval.datasets: the name(s) {', '.join(doubled)} are used twice; give each dataset its own name")
        return datasets


class _StudySpecCore(_Strict):
    study: str = Field(description="study name, used for the experiment folder")
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    grid: GridSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    weights: WeightsSpec = Field(default_factory=WeightsSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    task: str = Field(tasks.CLASSIFICATION.name, description="what the study predicts (ferbench.harness.tasks)")
    multilabel: MultilabelSpec = Field(default_factory=MultilabelSpec)
    trees: dict[str, TreeSpec] = Field(
        default_factory=dict, description="decision trees of CNNs, each trained by the grid arm tree:<name> "
        "(ferbench.harness.tree_spec)")

    @model_validator(mode="after")
    def _eval_sets_need_classes(self) -> "_StudySpecCore":
        """Cross-dataset evaluation maps and scores emotion classes; a multi-label study predicts none."""
        if self.eval.datasets and self.task == tasks.MULTILABEL.name:
            raise ValueError("eval.datasets: cross-dataset evaluation maps and scores emotion classes, which task "
                             "multilabel does not predict; remove eval.datasets, or use task: classification")
        return self

    @field_validator("task")
    @classmethod
    def _registered_task(cls, value: str) -> str:
        if value not in tasks.list_tasks():
            raise ValueError(f"unknown task {value!r}; registered: {', '.join(tasks.list_tasks())}")
        return value

    @model_validator(mode="after")
    def _task_checks(self) -> "_StudySpecCore":
        """The task's own settings: its losses, selection metrics and variants (``TaskInfo``)."""
        info = tasks.get_task_info(self.task)
        if self.train.loss not in ("auto", *info.losses):
            raise ValueError(f"train.loss: {self.train.loss} is not a loss of task {self.task}; use auto or one of "
                             f"{', '.join(info.losses)}")
        if self.train.select_metric not in info.select_metrics:
            raise ValueError(f"train.select_metric: {self.train.select_metric} is not measured by task {self.task}; use "
                             f"one of {', '.join(info.select_metrics)}")
        refused = sorted({name for arm in self.arms() for name in arm["variant"].split("+")} - set(info.variants or ()))
        if info.variants is not None and refused:
            raise ValueError(f"grid.variant: task {self.task} trains {', '.join(info.variants)} only, not "
                             f"{', '.join(refused)}; remove {'it' if len(refused) == 1 else 'them'} from grid.variant")
        return self

    @model_validator(mode="after")
    def _variant_checks(self) -> "_StudySpecCore":
        """Each variant an arm uses checks the spec as a whole (e.g. pseudo_label's unlabeled pool),
        only when the grid has such an arm, so excluding them leaves the other arms unchanged."""
        used = {info.name: info for arm in self.arms() for info in variants.parse_combination(arm["variant"])}
        for info in used.values():
            if info.check_spec is not None:
                info.check_spec(self)
        return self

    @model_validator(mode="after")
    def _keras_layer_lists(self) -> "_StudySpecCore":
        """keras_last_k needs each backbone's recorded Keras list, which describes the linear-head model."""
        if self.grid.axes:  # checked on each arm's own spec (``_arm_specs``)
            return self
        if self.train.freeze.policy == "keras_last_k":
            from ferbench.backbones.keras_layers import RECORDED_BACKBONES

            missing = [name for name in self.grid.backbone if name not in RECORDED_BACKBONES and not is_tree(name)]
            if missing:
                raise ValueError(
                    f"train.freeze.policy: keras_last_k needs a recorded Keras layer list, and there is none for "
                    f"{', '.join(missing)}; recorded: {', '.join(RECORDED_BACKBONES)} (use last_k for the others)"
                )
            if self.train.head != "linear":
                raise ValueError(
                    f"train.freeze.policy: keras_last_k counts the layers of the Keras models under the linear head; "
                    f"train.head={self.train.head} cuts them; use last_k or train.head=linear"
                )
        if self.model.vggface_descriptor == "fc8" and any(
            arm["backbone"] == "vggface" and arm["init"] == "pretrained" for arm in self.arms()
        ) and self.weights.source_for("vggface") == "synth-identity":
            raise ValueError(
                "model.vggface_descriptor: fc8 keeps the 2,622-identity layer, which synth-identity weights do not train; "
                "use published weights (weights.sources.vggface=published) or model.vggface_descriptor=fc7"
            )
        return self

    @model_validator(mode="after")
    def _tree_checks(self) -> "_StudySpecCore":
        """A ``tree:<name>`` arm names a tree of ``trees`` whose structure holds, whose nodes' settings are valid
        where they train (the study's spec with the node's written over it) and whose nodes take the same input."""
        used = [name for name in self.grid.backbone if is_tree(name)]
        if not used and not self.trees:
            return self
        problems = [f"grid.backbone: {name} names no tree; define it under trees.{tree_name(name)} "
                    f"(defined: {', '.join(self.trees) or 'none'})" for name in used if tree_name(name) not in self.trees]
        if used and self.task != tasks.CLASSIFICATION.name:
            problems.append(f"grid.backbone: a tree of CNNs classifies emotions; task {self.task} has no trees")
        for arm in self.arms():
            if is_tree(arm["backbone"]) and arm["init"] != "random":
                problems.append(f"grid: {arm['backbone']} trains from random init; add grid.exclude "
                                f"{{backbone: {arm['backbone']}, init: {arm['init']}}}")
                break
        data = self.model_dump(mode="json")
        for name, tree in self.trees.items():
            where = f"trees.{name}.nodes"
            try:
                tree.layout(where)
            except ValueError as err:
                problems.extend(str(err).splitlines())
            inputs = {}
            for index, node in enumerate(tree.nodes):
                try:
                    node_spec = StudySpec.model_validate(node_spec_data(data, node, self.grid.variant[0]))
                except ValidationError as err:
                    problems.extend(f"{where}[{index}] ({node.name}): {line}" for line in _format_validation_error(err).splitlines())
                    continue
                inputs[node.name] = _node_input(node.backbone, node_spec.train.input_size)
            if len(set(inputs.values())) > 1:
                problems.append(f"{where}: every node of a tree takes the same input (size, channels, normalisation); "
                                + "; ".join(f"{node}: {text}" for node, text in inputs.items()))
        for arm in self.arms():
            if is_tree(arm["backbone"]):
                refused = {info.name for info in variants.parse_combination(arm["variant"])} - {"baseline", "balanced"}
                if refused:
                    problems.append(f"grid.variant: a tree's nodes train as baseline or balanced, not {', '.join(sorted(refused))}; "
                                    f"add grid.exclude {{backbone: {arm['backbone']}, variant: {arm['variant']}}}")
                    break
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    @model_validator(mode="after")
    def _grid_not_empty(self) -> "_StudySpecCore":
        if not self.arms():
            raise ValueError(f"grid.exclude: the rules {self.grid.exclude} exclude every arm; the grid is empty")
        return self

    @model_validator(mode="after")
    def _arm_specs(self) -> "_StudySpecCore":
        """With extra grid axes, each arm's own spec (``arm_spec_data``: its axis values in their sections)
        passes every check a study does: a value valid alone may not be beside the study's other settings
        (``train.freeze.policy: keras_last_k`` with a backbone that has no Keras layer list). The
        keras_last_k check runs on those arm specs only, never on the study's values that the axes replace; the
        variants' checks run on both (they may settle study-wide things first, e.g. pseudo_label's unlabeled share
        of the split, which every arm's spec then holds)."""
        axes = self.grid.axes
        if not axes:
            return self
        data = self.model_dump(mode="json")
        present: list[dict[str, Any]] = []
        failures: dict[str, list[dict[str, Any]]] = {}  # problem line → the axis values it holds for
        for arm in self.arms():
            settings = arm["settings"]
            if settings in present:
                continue
            present.append(settings)
            try:
                lines = self._arm_problems(StudySpec.model_validate(arm_spec_data(data, settings)), settings)
            except ValidationError as err:
                lines = _format_validation_error(err).splitlines()
            for line in lines:
                failures.setdefault(line, []).append(settings)
        if failures:
            raise ValueError("\n".join(_where_settings_fail(axes, present, failures)))
        return self

    def _arm_problems(self, arm_spec: "_StudySpecCore", settings: dict[str, Any]) -> list[str]:
        """What an arm's settings break that only the study knows: synth-identity weights are pretrained once
        per backbone (before any trial) at the study's input size."""
        if "train.input_size" not in settings or settings["train.input_size"] == self.train.input_size:
            return []
        synth = sorted({arm["backbone"] for arm in arm_spec.arms()
                        if arm["init"] == "pretrained" and self.weights.source_for(arm["backbone"]) == "synth-identity"})
        if not synth:
            return []
        return [f"synth-identity weights of {', '.join(synth)} are pretrained once, at the study's train.input_size "
                f"({self.train.input_size}); an arm at another size needs published weights (weights.source=published) "
                "or random init"]

    def arms(self) -> list[dict[str, Any]]:
        """The grid cells in a stable order, with ``grid.exclude`` applied; k-fold studies add a ``fold`` axis.
        With extra axes each cell carries ``settings`` (dotted path → its value), which the trial applies to its
        own copy of the spec; a plain grid's cells are as they always were (stored experiments keep their ids)."""
        cells = []
        kfold = self.split.kfold
        axes = self.grid.axes
        for backbone, init, variant, *values, seed, fold in itertools.product(
            self.grid.backbone, self.grid.init, self.grid.variant, *axes.values(), self.grid.seed, self.split.fold_ids()
        ):
            cell = {"backbone": backbone, "init": init, "variant": variant, "seed": seed, **({"fold": fold} if kfold else {})}
            settings = dict(zip(axes, values))
            if settings:
                cell["settings"] = settings
            if any(all((settings[k] if k in settings else cell.get(k)) == v for k, v in rule.items())
                   for rule in self.grid.exclude):
                continue
            cell["arm_id"] = arm_id(cell)
            cells.append(cell)
        return cells


# The study spec: the core sections above plus one section per registered variant with settings
# (``pseudo_label``, ``balanced``), each declared by its variant's unit.
StudySpec = create_model(
    "StudySpec",
    __base__=_StudySpecCore,
    __doc__="A whole study: data, split, grid, training recipe, resources, run, weights, report, task and variant settings.",
    **{key: (model, Field(default_factory=model)) for key, model in variants.settings_sections().items()},
)


def _node_input(backbone: str, input_size: Any) -> str:
    """What a tree node's network is fed, in words: equal for nodes that can share one input adapter."""
    from ferbench.backbones import get_backbone_info

    info = get_backbone_info(backbone)
    size = info.input_size if input_size == "native" or info.fixed_input_size else input_size
    return f"{size} px, {info.in_chans} {info.channel_order}, mean {info.mean}, std {info.std}"


def arm_id(cell: dict[str, Any]) -> str:
    """A readable, filesystem-safe key of one grid arm: ``<backbone>_<init>_<variant>[_<settings>]_s<seed>[_f<fold>]``,
    the settings of extra axes as ``settings_label`` writes them (``small_cnn_random_baseline_lr1e-04_s0``)."""
    backbone = str(cell["backbone"]).replace("/", "--").replace(":", "-")  # hub repos: ORG/REPO stays apart from ORG-REPO
    fold = f"_f{cell['fold']}" if "fold" in cell else ""
    settings = settings_label(cell.get("settings") or {})
    return f"{backbone}_{cell['init']}_{cell['variant']}{'_' + settings if settings else ''}_s{cell['seed']}{fold}"


# --------------------------------------------------------------------------- extra grid axes

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # what an arm name (a folder name) keeps of a value


def axis_sections() -> tuple[str, ...]:
    """The spec sections whose settings may be extra grid axes: ``AXIS_SECTIONS`` and the variants' sections."""
    return (*AXIS_SECTIONS, *variants.settings_sections())


def axis_names(paths: typing.Iterable[str]) -> dict[str, str]:
    """Each axis' name in arm names: its last path element (``lr``), or as many of the last ones, joined by
    ``-``, as tell it from the study's other axes (``freeze-k`` beside another ``k``)."""
    paths = list(paths)
    names = {}
    for path in paths:
        parts = path.split(".")
        for count in range(1, len(parts) + 1):
            name = "-".join(parts[-count:])
            if all("-".join(other.split(".")[-count:]) != name for other in paths if other != path):
                break
        names[path] = _UNSAFE.sub("-", name)
    return names


def _number_text(number: float) -> str:
    """Short and exact: the shorter of the plain and the exponent form that read back as the same float,
    the exponent form on a tie (``0.5``, ``20``, ``0.01``; ``1e-03``, ``1e-04``, ``2.5e-04``)."""
    if number == 0 or not math.isfinite(number):
        return "0" if number == 0 else repr(number)
    plain = repr(number).removesuffix(".0")
    exponent = next(text for digits in range(18) if float(text := f"{number:.{digits}e}") == number)
    return exponent if len(exponent) <= len(plain) else plain


def setting_text(value: Any) -> str:
    """A setting's value as arm names and report tables write it: ``1e-04``, ``0.5``, ``head_only``, ``true``, ``none``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a NumPy scalar read back from a table
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return _number_text(value)
    return str(value)


def _value_text(value: Any) -> str:
    """A value as its arm-name part: numbers follow the axis name directly (``lr1e-04``), words after a ``-``
    (``policy-head_only``), with anything a folder name should not hold replaced by ``-``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a NumPy scalar read back from a table
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return setting_text(value)
    return "-" + (_UNSAFE.sub("-", setting_text(value)) or "x")


def settings_label(settings: dict[str, Any]) -> str:
    """The arm-name part of an arm's extra-axis values, ``lr1e-04_policy-head_only`` ("" for a plain grid);
    also the suffix of a model's name in reports, so a table's row and a trial folder say the same."""
    names = axis_names(settings)
    return "_".join(f"{names[path]}{_value_text(value)}" for path, value in settings.items())


def arm_spec_data(spec_data: dict, settings: dict[str, Any]) -> dict:
    """``spec_data`` (a ``StudySpec.model_dump(mode="json")``) as one arm trains with it: ``settings`` (the arm's
    values of the extra axes) written into their sections, the axes taken off the grid, and the exclude rules
    that name them resolved for these values. Validated, it is the arm's own spec (what its trial reads)."""
    if not settings:
        return spec_data
    data = copy.deepcopy(spec_data)
    grid = data["grid"]
    axes = [key for key in grid if key not in GridSpec.model_fields]
    for key in axes:
        del grid[key]
    rules = []
    for rule in grid.get("exclude", []):
        if all(settings.get(key) == value for key, value in rule.items() if key in axes):
            rest = {key: value for key, value in rule.items() if key not in axes}
            if rest:  # a rule on these settings alone excludes every arm that has them: no such arm asks
                rules.append(rest)
    grid["exclude"] = rules
    for path, value in settings.items():
        *sections, name = path.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return data


def _dotted(path: str, value: Any) -> dict[str, Any]:
    """``{"train": {"lr": [...]}}`` under ``train`` → ``{"train.lr": [...]}``: nested and dotted spellings alike."""
    if isinstance(value, dict) and value:
        return {key: inner for name, item in value.items() for key, inner in _dotted(f"{path}.{name}", item).items()}
    return {path: value}


def _flat_rule(rule: Any) -> Any:
    """An exclude rule with the extra axes it names under their dotted paths."""
    return {key: value for name, item in rule.items() for key, value in _dotted(str(name), item).items()} if isinstance(rule, dict) else rule


def _axis_list_problem(path: str, values: Any) -> str:
    if not isinstance(values, list):
        return f"grid.{path}: an axis takes a list of values, e.g. grid.{path}: [{values!r}, …]; got {values!r}"
    return "" if values else f"grid.{path}: an axis needs at least one value, got []"


def _setting_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Every setting's dotted path under a section (for "did you mean")."""
    paths = []
    for name, field in model.model_fields.items():
        inner = field.annotation
        paths += _setting_paths(inner, f"{prefix}{name}.") if isinstance(inner, type) and issubclass(inner, BaseModel) else [prefix + name]
    return paths


def _axis_field(path: str) -> tuple[type[BaseModel], tuple[str, ...]] | str:
    """(the top-level section model, the path inside it) of an extra axis, or the line saying why it cannot be one."""
    import difflib

    where, parts = f"grid.{path}", path.split(".")
    if path in NOT_AXIS_PATHS or parts[0] in NOT_AXES:
        return f"{where}: cannot be a grid axis: {NOT_AXIS_PATHS.get(path) or NOT_AXES[parts[0]]}"
    model: Any = StudySpec.model_fields[parts[0]].annotation if parts[0] in axis_sections() else None
    for part in parts[1:]:
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        model = fields[part].annotation if part in fields else None
    if model is None:
        known = [*GRID_AXES, *(p for section in axis_sections()
                               for p in _setting_paths(StudySpec.model_fields[section].annotation, f"{section}."))]
        close = difflib.get_close_matches(path, known, n=1)
        hint = f"did you mean grid.{close[0]}? " if close else ""
        return (f"{where}: unknown setting {path!r}: an extra axis is a setting's dotted path, e.g. grid.train.lr; "
                f"{hint}check the spelling against `ferbench run --print-spec`")
    if isinstance(model, type) and issubclass(model, BaseModel):
        return f"{where}: {path} is a section, not a setting; an axis is one of its settings, e.g. grid.{path}.{next(iter(model.model_fields))}"
    return StudySpec.model_fields[parts[0]].annotation, tuple(parts[1:])


def _axis_value(path: str, located: tuple[type[BaseModel], tuple[str, ...]], value: Any, where: str) -> tuple[Any, str]:
    """(the value as its setting holds it, "") or (value, the line saying why ``where`` is refused). Checked in
    its section beside the defaults; rules across settings are checked with the study's own, arm by arm."""
    section, inner = located
    nested = value
    for part in reversed(inner):
        nested = {part: nested}
    try:
        model: Any = section.model_validate(nested)
    except ValidationError as err:
        for problem in err.errors():
            if tuple(str(p) for p in problem["loc"][:len(inner)]) == inner:
                message = problem["msg"].removeprefix("Value error, ")
                return value, f"{where}: {message}" + ("" if "got " in message else f" (got {value!r})")
        return value, ""
    for part in inner:
        model = getattr(model, part)
    return model, ""


def _where_settings_fail(axes: dict[str, list[Any]], present: list[dict[str, Any]],
                         failures: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each problem of the arms' own specs, named by the axis value it comes with (``grid.train.lr.1: …``)
    where every arm with that value has it, else by the arms' settings."""
    lines = []
    for problem, failing in failures.items():
        covered: list[dict[str, Any]] = []
        for path, values in axes.items():
            for index, value in enumerate(values):
                having = [settings for settings in present if settings[path] == value]
                if having and all(s in failing for s in having) and not all(s in covered for s in having):
                    lines.append(f"grid.{path}.{index}: {problem}")
                    covered += having
        for settings in failing:
            if settings not in covered:
                shown = ", ".join(f"{path}={value}" for path, value in settings.items())
                lines.append(f"grid (the arms with {shown}): {problem}")
    return list(dict.fromkeys(lines))


def builtin_studies() -> list[str]:
    folder = resources.files(BUILTIN_STUDY_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_study_yaml(study: str) -> tuple[dict, str]:
    """Load a built-in study by name or a YAML file by path."""
    if study in builtin_studies():
        text = resources.files(BUILTIN_STUDY_PACKAGE).joinpath(f"{study}.yaml").read_text()
        source = f"built-in study {study!r}"
    else:
        path = Path(study).expanduser()
        if not path.is_file():
            raise SpecError(
                f"study {study!r}: neither a built-in study ({', '.join(builtin_studies())}) nor an existing YAML file"
            )
        text, source = path.read_text(), str(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: must be a YAML mapping of sections (data, grid, train, …)")
    raw.setdefault("study", Path(study).stem if source != f"built-in study {study!r}" else study)
    return raw, source


def _expects_text(keys: list[str]) -> bool:
    """Whether the spec field at ``keys`` holds free text (names, paths), which --set keeps verbatim."""
    model: Any = StudySpec
    annotation: Any = None
    for key in keys:
        fields = getattr(model, "model_fields", None)
        if fields is None:  # inside a dict field such as weights.files: its value type decides
            args = typing.get_args(annotation)
            annotation = args[1] if len(args) == 2 else None
        elif key in fields:
            annotation = fields[key].annotation
        else:
            return False
        model = annotation
    if annotation is str:
        return True
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return is_union and set(typing.get_args(annotation)) <= {str, type(None)}


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override. Values are YAML (``[1, 2]``, ``1e-4``, ``true``), except
    for text fields (names, paths), which are taken as written."""
    key, sep, value_text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or not all(parts):
        raise SpecError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    if _expects_text(parts) and value_text not in ("null", "~", ""):
        value: Any = value_text
    else:
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError:
            value = value_text
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc) or "spec"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (value {problem['input']!r}); check the spelling against `ferbench run --print-spec`")
        elif problem["type"] == "missing" and loc and loc[-1].isdigit():
            lines.append(f"{'.'.join(loc[:-1])}: too few values, got {problem['input']!r}")
        elif problem["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif not loc or "\n" in message or message.startswith(key):
            lines.extend(message.splitlines())
        elif "got " in message:
            lines.append(f"{key}: {message}")
        else:
            lines.append(f"{key}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def ignored_settings(spec: StudySpec) -> list[str]:
    """Settings of a user's study that would be ignored without a word: weights for an unknown
    backbone, and weights.files for a backbone whose pretrained arms use synth-identity weights.
    Checked in ``load_spec`` only, so that experiments stored by earlier versions still resume."""
    from ferbench.backbones import is_known_backbone, list_backbones
    from ferbench.backbones.registry import ALLOWED_FORMS

    problems = [
        f"weights.{key}.{name}: unknown backbone {name!r}; allowed: {', '.join(list_backbones())} or {ALLOWED_FORMS}"
        for key in ("files", "sources") for name in getattr(spec.weights, key) if not is_known_backbone(name)
    ]
    pretrained = {arm["backbone"] for arm in spec.arms() if arm["init"] == "pretrained"}
    for backbone in spec.weights.files:
        if backbone in pretrained and spec.weights.source_for(backbone) == "synth-identity":
            key = f"weights.sources.{backbone}" if backbone in spec.weights.sources else "weights.source"
            problems.append(
                f"weights.files.{backbone}: the file is used only with published weights, but {backbone}'s pretrained "
                f"arms use synth-identity ({key}); to use the file add --set weights.sources.{backbone}=published, "
                f"otherwise drop weights.files.{backbone}"
            )
    return problems


def load_spec(study: str = "quick", overrides: list[str] | None = None) -> StudySpec:
    """Resolve a study (built-in name or YAML path, ``~`` expanded) with overrides into a validated spec."""
    raw, source = _read_study_yaml(study)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_validation_error(err)) from None
    problems = ignored_settings(spec)
    if problems:
        raise SpecError("\n".join(problems))
    return spec


def spec_to_yaml(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
