"""Registry of backbones: one ``create_backbone`` entry point, metadata as data (timm's model).

Each entry knows how to build its network for ``num_classes`` outputs and describes the
input it expects (size, channels, normalisation) so the harness can adapt any dataset to
it on the training device. Any timm model is available as ``timm:<name>``, and any timm
model on the Hugging Face Hub as ``timm:hf-hub:ORG/REPO`` (``ferbench.backbones.hf_hub``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

TIMM_PREFIX = "timm:"
ALLOWED_FORMS = "timm:<model name> or timm:hf-hub:ORG/REPO"


TORCH_DEFAULT_INIT = (
    "PyTorch's layer defaults: conv and linear weights Kaiming-uniform (a=√5, i.e. ±1/√fan_in), "
    "biases uniform ±1/√fan_in, BatchNorm γ=1 β=0"
)


@dataclass(frozen=True)
class BackboneInfo:
    """What the harness must know to feed and describe a backbone."""

    name: str
    family: str
    input_size: int
    in_chans: int
    channel_order: str  # "RGB", "BGR" or "GRAY"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrained_sources: tuple[str, ...] = ()
    description: str = ""
    timm_name: str | None = None  # set for timm-backed entries: architecture.tag
    embedding_dim: int | None = None  # width of the features the classifier sees (None: the model's num_features)
    weight_filename: str | None = None  # the published weight file's name, where there is one
    keras_conv_bias: bool = False  # Keras' version of this network has conv biases the PyTorch one lacks
    fixed_input_size: bool = False  # only the native size works; the harness always resizes to it
    random_init: str = TORCH_DEFAULT_INIT  # what ``init: random`` draws, from torch's RNG seeded by the arm's seed
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneOptions:
    """What a backbone's trunk ends with (spec section ``model``); the defaults are deepface's and timm's today.

    ``vggface_descriptor``: ``fc7`` = ReLU(fc7), 4,096-d (deepface since 2024), ``fc8`` = fc8 flattened,
    2,622-d (deepface's 2022 descriptor, the Smelyakov paper's). ``openface_l2_norm``: keep the
    L2-normalisation after Dense(128), or end at Dense(128) (the paper's "last layer excluded").
    ``resnet_mobilenet_final_relu``: ``resnet50`` and ``mobilenet_v1`` keep their last activation, or
    ``drop`` it, as the paper's "last layer excluded" did to Keras' ``include_top=False`` models
    (whose last layers are that activation); it has no effect on other backbones. ``moravcik_blocks``:
    the convolution blocks of ``moravcik_final`` (the thesis: 4; its decision tree's networks 2 or 3).
    """

    vggface_descriptor: Literal["fc7", "fc8"] = "fc7"
    openface_l2_norm: bool = True
    resnet_mobilenet_final_relu: Literal["keep", "drop"] = "keep"
    moravcik_blocks: int = 4


RANDOM_INITS = ("torch", "keras")
Builder = Callable[[BackboneInfo, int, "Path | None", BackboneOptions], nn.Module]
_REGISTRY: dict[str, tuple[BackboneInfo, Builder]] = {}


def register_backbone(info: BackboneInfo) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(info, num_classes, weights_file, options) -> nn.Module`` under ``info.name``."""

    def decorate(builder: Builder) -> Builder:
        if info.name in _REGISTRY:
            raise ValueError(f"backbone {info.name!r} is registered twice")
        _REGISTRY[info.name] = (info, builder)
        return builder

    return decorate


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named ``<prefix><model>`` on demand (``timm:<any timm model>``), registered by the
    module that builds them, so the registry imports no family's module."""

    prefix: str
    is_model: Callable[[str], bool]  # the part after the prefix
    lookup: Callable[[str], tuple[BackboneInfo, Builder]]  # the full name


_FAMILIES: list[BackboneFamily] = []


def register_family(family: BackboneFamily) -> None:
    _FAMILIES.append(family)


def _family(name: str) -> BackboneFamily | None:
    return next((f for f in _FAMILIES if name.startswith(f.prefix) and f.is_model(name[len(f.prefix):])), None)


def is_known_backbone(name: str) -> bool:
    return name in _REGISTRY or _family(name) is not None


def _lookup(name: str) -> tuple[BackboneInfo, Builder]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    family = _family(name)
    if family is not None:
        return family.lookup(name)
    raise KeyError(f"unknown backbone {name!r}; allowed: {', '.join(list_backbones())} or {ALLOWED_FORMS}")


def get_backbone_info(name: str) -> BackboneInfo:
    return _lookup(name)[0]


def create_backbone(
    name: str, num_classes: int, weights_file: str | Path | None = None, head: str = "linear",
    options: BackboneOptions | None = None, random_init: str = "torch",
) -> nn.Module:
    """Build ``name`` with a ``num_classes`` classifier; ``weights_file`` loads pretrained weights
    into the backbone; ``head`` picks one of ``ferbench.backbones.heads.HEADS``; ``options`` what the face
    backbones end with.

    Weights no file provides are drawn from torch's global RNG, so seeding torch before this call
    makes initialisation reproducible: with ``random_init="torch"`` by each library's own
    initialiser, with ``"keras"`` by Keras' (glorot-uniform kernels, zero biases; see
    ``ferbench.backbones.keras_init``) — the whole network without a weights file, else the head alone.
    The model carries its recorded Keras layer list (``keras_layers``, None where there is none)
    for the ``keras_last_k`` freezing policy.
    """
    from ferbench.backbones.heads import attach_head
    from ferbench.backbones.keras_init import apply_keras_init
    from ferbench.backbones.keras_layers import keras_layer_list

    if random_init not in RANDOM_INITS:
        raise ValueError(f"unknown random_init {random_init!r}; allowed: {', '.join(RANDOM_INITS)}")
    options = options or BackboneOptions()
    info, builder = _lookup(name)
    model = builder(info, num_classes, Path(weights_file) if weights_file else None, options)
    model = attach_head(model, head, num_classes)
    if random_init == "keras":
        apply_keras_init(model.get_classifier() if weights_file else model)
    model.keras_layers = keras_layer_list(name, options.vggface_descriptor) if head == "linear" else None
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def _keras_extras(model: nn.Module, conv_bias: bool) -> int:
    """What Keras counts beyond PyTorch parameters: BatchNorm moving statistics, and conv biases
    where Keras' version of the network has them and the PyTorch one has not."""
    extra = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            extra += module.running_mean.numel() + module.running_var.numel()
        if conv_bias and isinstance(module, nn.Conv2d) and module.bias is None:
            extra += module.out_channels
    return extra


def meta_backbone(name: str, num_classes: int = 1, options: BackboneOptions | None = None) -> nn.Module:
    """``name`` built on PyTorch's meta device: every parameter and buffer has its shape but no
    storage, and the initialisers touch no memory, so counting VGG-Face's 134 M parameters takes
    milliseconds and no RAM. For counting and inspecting modules only; it cannot run or load weights."""
    with torch.device("meta"):
        return create_backbone(name, num_classes=num_classes, options=options)


def backbone_parameter_counts(
    name: str, model: nn.Module | None = None, options: BackboneOptions | None = None
) -> dict[str, int]:
    """Parameters of the backbone with its classifier removed, as the papers count them:
    ``params`` (PyTorch) and ``keras_params`` (what Keras' ``count_params`` reports). Without
    ``model`` it is built on the meta device (``meta_backbone``)."""
    info = get_backbone_info(name)
    model = model if model is not None else meta_backbone(name, options=options)
    head = model.get_classifier()
    params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head.parameters())
    keras = params + _keras_extras(model, info.keras_conv_bias) - _keras_extras(head, info.keras_conv_bias)
    return {"params": params, "keras_params": keras}


def _refused_pickle(err: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused the file for holding pickled objects (a whole
    model, a custom class), as opposed to it being truncated or corrupt."""
    text = str(err)
    return any(sign in text for sign in ("Unsupported global", "non-allowlisted pickle globals"))


def unreadable_weights(path: Path | str, err: Exception) -> ValueError:
    """The one-line error for a weights file torch cannot read. Only the error's type is quoted:
    torch's text for a refused pickle is advice to load it with code execution on."""
    if _refused_pickle(err):
        return ValueError(
            f"{path}: not a plain tensor file: it holds pickled Python objects (e.g. a whole model), which could run "
            "code when loaded, so it is refused; re-save the weights with torch.save(model.state_dict(), PATH) "
            "(or as .safetensors)"
        )
    return ValueError(f"{path}: not a readable weights file, truncated or corrupt ({type(err).__name__}); "
                      "download it again or export it with torch.save(model.state_dict())")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch file (never unpickling code) as a dict of tensors."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types (SafetensorError, UnpicklingError, …)
        raise unreadable_weights(path, err) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


Shape = tuple[int, ...]


def describe_mismatch(path: Path | str, name: str, missing: list[str], unexpected: list[str],
                      shapes: list[tuple[str, Shape, Shape]]) -> str:
    """One line on a state_dict that does not fit ``name``: counts, and the first of each kind only
    (a ResNet's full key list is kilobytes long)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its tensors missing from the file (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors in the file it does not have (first: {unexpected[0]})")
    if shapes:
        key, in_file, in_model = shapes[0]
        parts.append(f"{len(shapes)} of another shape (first: {key}, {list(in_file)} in the file, {list(in_model)} in {name})")
    return f"{path}: not {name} weights: {'; '.join(parts)}; check that the file is {name}'s"


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[tuple[str, Shape, Shape]]]:
    """(missing keys, unexpected keys, (key, shape in ``given``, shape in ``expected``)) of ``given``
    against a model's ``expected`` state_dict, each in the model's (or the file's) order."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [(key, tuple(given[key].shape), tuple(value.shape)) for key, value in expected.items()
              if key in given and tuple(given[key].shape) != tuple(value.shape)]
    return missing, unexpected, shapes


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path | str,
                     ignore_missing: tuple[str, ...] = ()) -> None:
    """Raise ``describe_mismatch``'s ValueError unless ``state`` fits ``module`` exactly (keys in
    ``module`` starting with ``ignore_missing`` may be absent from the file)."""
    missing, unexpected, shapes = state_dict_mismatch(module.state_dict(), state)
    missing = [key for key in missing if not key.startswith(ignore_missing)] if ignore_missing else missing
    if missing or unexpected or shapes:
        raise ValueError(describe_mismatch(path, name, missing, unexpected, shapes))


_QUOTED = re.compile(r'"([^"]*)"')
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
                            r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def parse_load_error(err: Exception) -> tuple[list[str], list[str], list[tuple[str, Shape, Shape]]] | None:
    """The (missing, unexpected, shapes) of torch's ``load_state_dict`` RuntimeError, or None when
    ``err`` is not one (for loaders such as timm's that call it themselves)."""
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        return None

    def keys(label: str) -> list[str]:
        line = next((line for line in text.splitlines() if label in line), "")
        return _QUOTED.findall(line.split(label, 1)[-1]) if line else []

    def shape(dims: str) -> Shape:
        return tuple(int(d) for d in dims.split(",") if d.strip())

    shapes = [(key, shape(a), shape(b)) for key, a, b in _SIZE_MISMATCH.findall(text)]
    return keys("Missing key(s) in state_dict:"), keys("Unexpected key(s) in state_dict:"), shapes
