"""Study specification: YAML study files plus ``--set key=value`` overrides, validated up front.

A study is a grid (backbone × init × variant × seed) over one dataset with one training
recipe. Everything is validated here, before Ray starts, so that a typo costs a second,
not a cluster-hour. Errors are reported as one line per problem naming the key, the bad
value and what is allowed.
"""

from __future__ import annotations

import itertools
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from ferbench.harness import tasks, variants
from ferbench.harness.strict_model import StrictModel as _Strict

BUILTIN_STUDY_PACKAGE = "ferbench.harness.study.studies"
INITS = ("random", "pretrained")
GRID_AXES = ("backbone", "init", "variant", "seed")


class SpecError(ValueError):
    """A study spec is invalid; ``str()`` is the user-facing message (one line per problem)."""


class DataSpec(_Strict):
    format: Literal["synthfer", "fer2013", "fer2013_folders", "rafdb", "ckplus", "folder", "auto"] = Field(
        "synthfer", description="dataset layout; 'auto' detects it from data.path and says which it found"
    )
    path: str | None = Field(None, description="file or folder of a real dataset")
    ferplus_labels: str | None = Field(None, description="FER2013: fer2013new.csv; majority-vote FERPlus labels, not-a-face rows dropped")
    contempt: str = Field("keep", description="CK+: 'keep' (an 8th class), 'drop', or a class to map it to (e.g. happy)")
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

    @field_validator("drop_classes", mode="before")
    @classmethod
    def _one_class_as_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

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
    kind: Literal["stratified", "official", "subject_kfold"] = Field(
        "stratified", description="stratified ratios, the dataset's official split, or subject-exclusive k-fold"
    )
    ratios: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="stratified: train/val/test fractions")
    seed: int = Field(42, description="random_state of every random cut")
    test: Literal["PrivateTest", "PublicTest"] = Field(
        "PrivateTest", description="official FER2013: the Usage reported as test; the other one is val"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="official splits without val (RAF-DB) and k-fold: share of train cut off as val")
    unlabeled_fraction: float = Field(0.0, ge=0, lt=1, description="share of train cut off first as 'unlabeled' (Arsirii: 0.1)")
    k: int = Field(10, ge=2, description="subject_kfold: number of folds (the thesis: 5, 8, 10)")
    folds: list[int] | None = Field(None, description="subject_kfold: folds to run (default: all k)")
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

    def fold_ids(self) -> list[int]:
        """The folds a study runs: ``folds`` (or all ``k``) for subject_kfold, else the single fold 0."""
        if self.kind != "subject_kfold":
            return [0]
        return list(self.folds) if self.folds is not None else list(range(self.k))

    @model_validator(mode="after")
    def _folds_within_k(self) -> "SplitSpec":
        bad = [f for f in self.folds or [] if not 0 <= f < self.k]
        if bad:
            raise ValueError(f"split.folds: {bad} outside 0..{self.k - 1} (split.k = {self.k})")
        return self


class GridSpec(_Strict):
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

        problems = [
            f"grid.backbone.{index}: unknown backbone {name!r}; allowed: {', '.join(list_backbones())} or timm:<model>"
            for index, name in enumerate(names)
            if not is_known_backbone(name)
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return names

    @field_validator("exclude")
    @classmethod
    def _exclude_keys(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for rule in rules:
            unknown = set(rule) - set(GRID_AXES)
            if unknown or not rule:
                raise ValueError(f"each rule names grid axes {list(GRID_AXES)}, got {rule}")
        return rules


class AugmentSpec(_Strict):
    enabled: bool = True
    hflip: bool = True
    rotation_deg: float = Field(10.0, ge=0, le=180)
    zoom: float = Field(0.1, ge=0, lt=1, description="scale drawn from [1-zoom, 1+zoom]")
    translate: float = Field(0.1, ge=0, lt=1, description="shift as a fraction of the image side")
    shear_deg: float = Field(0.0, ge=0, le=60)


class FreezeSpec(_Strict):
    policy: Literal["none", "last_k", "keras_last_k", "head_only", "two_stage"] = Field(
        "none", description="which layers train; see backbones/freezing.py for the definition of a layer"
    )
    k: int = Field(4, ge=0, description="last_k: trunk layers that train; keras_last_k: Keras layers after "
                   "excluding the last one (Smelyakov: 4)")
    unfreeze_epoch: int = Field(1, ge=1, description="two_stage: first epoch with everything trainable")
    unfreeze_lr_factor: float = Field(0.1, gt=0, description="two_stage: learning-rate factor after unfreezing")


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
    select_metric: Literal["val_acc", "val_loss"] = Field(
        "val_acc", description="best_val: highest val_acc or lowest val_loss; ties → the earlier epoch; epoch 0 never"
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

    def backbone_options(self) -> "BackboneOptions":  # noqa: F821 (imported inside: backbones pulls in torch)
        from ferbench.backbones.registry import BackboneOptions

        return BackboneOptions(**self.model_dump())


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0, description="CPUs per trial (also torch threads)")
    gpu: float = Field(0, ge=0, description="GPUs per trial; fractions share one GPU")


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
    files: dict[str, str] = Field(default_factory=dict, description="backbone name → weight file")
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
    task: str = Field(tasks.CLASSIFICATION.name, description="what the study predicts (ferbench.harness.tasks)")

    @field_validator("task")
    @classmethod
    def _registered_task(cls, value: str) -> str:
        if value not in tasks.list_tasks():
            raise ValueError(f"unknown task {value!r}; registered: {', '.join(tasks.list_tasks())}")
        return value

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
        if self.train.freeze.policy == "keras_last_k":
            from ferbench.backbones.keras_layers import RECORDED_BACKBONES

            missing = [name for name in self.grid.backbone if name not in RECORDED_BACKBONES]
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
    def _grid_not_empty(self) -> "_StudySpecCore":
        if not self.arms():
            raise ValueError(f"grid.exclude: the rules {self.grid.exclude} exclude every arm; the grid is empty")
        return self

    def arms(self) -> list[dict[str, Any]]:
        """The grid cells in a stable order, with ``grid.exclude`` applied; k-fold studies add a ``fold`` axis."""
        cells = []
        kfold = self.split.kind == "subject_kfold"
        for backbone, init, variant, seed, fold in itertools.product(
            self.grid.backbone, self.grid.init, self.grid.variant, self.grid.seed, self.split.fold_ids()
        ):
            cell = {"backbone": backbone, "init": init, "variant": variant, "seed": seed, **({"fold": fold} if kfold else {})}
            if any(all(cell.get(k) == v for k, v in rule.items()) for rule in self.grid.exclude):
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


def arm_id(cell: dict[str, Any]) -> str:
    """A readable, filesystem-safe key of one grid arm."""
    backbone = str(cell["backbone"]).replace(":", "-").replace("/", "-")
    fold = f"_f{cell['fold']}" if "fold" in cell else ""
    return f"{backbone}_{cell['init']}_{cell['variant']}_s{cell['seed']}{fold}"


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

    problems = [
        f"weights.{key}.{name}: unknown backbone {name!r}; allowed: {', '.join(list_backbones())} or timm:<model>"
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
