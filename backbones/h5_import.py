"""Convert deepface's Keras ``.h5`` weights (VGG-Face, OpenFace) into state dicts for its PyTorch modules.

Why: many researchers hold deepface's older Keras files (``vgg_face_weights.h5``,
``openface_weights.h5``) rather than the ``.pth`` ports; reading them with h5py alone makes them
usable without installing TensorFlow. The result loads with ``strict=True`` into
``VggFaceBaseModel(include_top=True)`` / ``OpenFaceNet``, and every tensor is checked against
the PyTorch module's shape first, so a wrong or truncated file fails here, naming file, layer and
shapes, and never half-loads.

Matching Keras layers to PyTorch modules follows how deepface itself loads these files
(``model.load_weights`` without ``by_name``):
- VGG-Face is a Keras ``Sequential`` of unnamed layers (auto names such as ``conv2d_3`` vary with
  the Keras version that saved the file), so its 16 layers with weights are matched by position to
  conv1_1 … conv5_3, fc6, fc7, fc8 (fc6/fc7/fc8 are 7×7, 1×1, 1×1 convolutions in both frameworks).
- OpenFace's Keras layers are named (``conv1``, ``bn1``, ``inception_3a_3x3_conv1``, …,
  ``dense_layer``, see deepface's ``models/facial_recognition/tf/OpenFace.py``), so they are
  matched by name through :func:`openface_keras_name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

FaceBackbone = Literal["vggface", "openface"]
H5_BACKBONES: tuple[str, ...] = ("vggface", "openface")

# Keras BatchNormalization weight → PyTorch BatchNorm2d tensor.
BN_ROLES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with weights: its name and its arrays by role (``kernel``, ``bias``, ``gamma``, …)."""

    name: str
    weights: dict[str, np.ndarray]


def keras_conv_kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Keras Conv2D kernels are (height, width, in, out); PyTorch's are (out, in, height, width)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def keras_dense_kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Keras Dense kernels are (in, out), ``y = x @ K``; PyTorch Linear weights are (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.T))


def _keras_kernel_shape(torch_shape: torch.Size) -> tuple[int, ...]:
    if len(torch_shape) == 4:
        out_ch, in_ch, height, width = torch_shape
        return (height, width, in_ch, out_ch)
    return tuple(reversed(torch_shape))


def openface_keras_name(module_name: str) -> str:
    """Keras layer name of an OpenFaceNet module holding weights, e.g.
    ``conv1.bn`` → ``bn1``, ``inception_3a.branch_3x3.0.conv`` → ``inception_3a_3x3_conv1``,
    ``inception_3a.branch_pool.bn`` → ``inception_3a_pool_bn``, ``dense_layer`` → ``dense_layer``."""
    parts = module_name.split(".")
    if parts == ["dense_layer"]:
        return "dense_layer"
    if len(parts) == 2 and parts[0].startswith("conv"):  # stem: ConvBn modules conv1..conv3
        index = parts[0].removeprefix("conv")
        return parts[0] if parts[1] == "conv" else f"bn{index}"
    if len(parts) in (3, 4) and parts[0].startswith("inception_") and parts[1].startswith("branch_"):
        stem = f"{parts[0]}_{parts[1].removeprefix('branch_')}"
        if len(parts) == 4:  # a two-layer branch (nn.Sequential of ConvBn): Keras numbers them from 1
            return f"{stem}_{parts[3]}{int(parts[2]) + 1}"
        return f"{stem}_{parts[2]}"
    raise ValueError(f"no Keras name known for OpenFace module {module_name!r}")


def _reference_model(backbone: str) -> nn.Module:
    """deepface's PyTorch module on the meta device: names and shapes without allocating weights."""
    from deepface.models.facial_recognition.pytorch import OpenFace, VGGFace

    with torch.device("meta"):
        if backbone == "vggface":
            return VGGFace.VggFaceBaseModel(include_top=True)
        return OpenFace.OpenFaceNet()


def weighted_modules(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, in registration order (= Keras layer order)."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_layers(h5_path: str | Path) -> list[KerasLayer]:
    """The layers with weights of a Keras 2 HDF5 file (``save_weights`` or full ``save``), in file order."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise ModuleNotFoundError("ferbench weights import-h5 needs h5py: pip install 'ferbench[h5]'", name="h5py") from None

    path = Path(h5_path)
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in root.attrs:
                raise ValueError(
                    f"{path}: no 'layer_names' attribute, so not a Keras 2 HDF5 weights file "
                    "(Keras 3 '.weights.h5' files are not supported)"
                )
            layers = []
            for layer_name in map(_text, root.attrs["layer_names"]):
                if layer_name not in root:
                    raise ValueError(f"{path}: layer {layer_name!r} is listed in layer_names but absent (truncated file?)")
                group = root[layer_name]
                names = [_text(name) for name in group.attrs.get("weight_names", [])]
                absent = [name for name in names if name not in group]
                if absent:
                    raise ValueError(
                        f"{path}: layer {layer_name!r} lists weight {absent[0]!r} but it is absent (truncated file?)"
                    )
                if names:
                    weights = {name.split("/")[-1].split(":")[0]: np.asarray(group[name][()]) for name in names}
                    layers.append(KerasLayer(layer_name, weights))
            return layers
    except (OSError, KeyError, RuntimeError) as err:  # h5py reports corrupt or truncated files as these
        raise ValueError(f"{path}: not a readable Keras HDF5 file ({type(err).__name__}: {err})") from None


def _convert_layer(path: Path, layer: KerasLayer, module: str, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """One Keras layer's arrays as PyTorch tensors for ``module``, every shape checked first."""
    if f"{module}.running_mean" in shapes:  # BatchNormalization
        plan: list[tuple[str, str, Callable[[np.ndarray], torch.Tensor]]] = [
            (role, f"{module}.{tensor}", torch.from_numpy) for role, tensor in BN_ROLES.items()
        ]
    else:
        to_torch = keras_conv_kernel_to_torch if len(shapes[f"{module}.weight"]) == 4 else keras_dense_kernel_to_torch
        plan = [("kernel", f"{module}.weight", to_torch), ("bias", f"{module}.bias", torch.from_numpy)]
    unexpected = sorted(set(layer.weights) - {role for role, _, _ in plan})
    if unexpected:
        raise ValueError(f"{path}: layer {layer.name!r} (for {module}) has unexpected weights {unexpected}")
    state = {}
    for role, key, to_torch in plan:
        if role not in layer.weights:
            raise ValueError(f"{path}: layer {layer.name!r} (for {module}) has no {role!r}; found {sorted(layer.weights)}")
        array = np.asarray(layer.weights[role], dtype=np.float32)
        expected = _keras_kernel_shape(shapes[key]) if role == "kernel" else tuple(shapes[key])
        if array.shape != expected:
            raise ValueError(
                f"{path}: layer {layer.name!r} {role}: expected shape {expected} "
                f"(Keras layout of {key} {tuple(shapes[key])}), found {array.shape}"
            )
        state[key] = to_torch(array)
    if f"{module}.num_batches_tracked" in shapes:  # a PyTorch-only counter; strict loading wants it
        state[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def _first_of(names: list[str]) -> str:
    return repr(names[0]) + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _match_by_position(path: Path, layers: list[KerasLayer], modules: list[str]) -> list[tuple[KerasLayer, str]]:
    """VGG-Face: Keras' unnamed Sequential layers, matched in order as Keras' ``load_weights`` does."""
    counts = f"{path}: {len(layers)} layers with weights, VGG-Face has {len(modules)} ({modules[0]} … {modules[-1]})"
    if len(layers) < len(modules):
        raise ValueError(f"{counts}: the layer for {modules[len(layers)]!r} is missing (truncated or not VGG-Face?)")
    if len(layers) > len(modules):
        raise ValueError(f"{counts}: unexpected {_first_of([layer.name for layer in layers[len(modules):]])} (not VGG-Face?)")
    return list(zip(layers, modules))


def _match_by_name(path: Path, layers: list[KerasLayer], modules: list[str]) -> list[tuple[KerasLayer, str]]:
    """OpenFace: Keras layer names from deepface's Keras model, mapped by :func:`openface_keras_name`."""
    by_name = {layer.name: layer for layer in layers}
    wanted = {openface_keras_name(module): module for module in modules}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(
            f"{path}: layer {missing[0]!r} (for OpenFace's {wanted[missing[0]]}) is missing"
            + (f", and {len(missing) - 1} more" if len(missing) > 1 else "") + " (truncated or not OpenFace?)"
        )
    extra = [name for name in by_name if name not in wanted]
    if extra:
        raise ValueError(f"{path}: layers OpenFace does not have: {_first_of(extra)} (not deepface's OpenFace?)")
    return [(by_name[name], module) for name, module in wanted.items()]


def import_h5(h5_path: str | Path, backbone: FaceBackbone) -> dict[str, torch.Tensor]:
    """Convert a deepface Keras ``.h5`` file to a state dict for deepface's PyTorch ``backbone``
    (``VggFaceBaseModel(include_top=True)`` or ``OpenFaceNet``), loadable with ``strict=True``."""
    if backbone not in H5_BACKBONES:
        raise ValueError(f"import_h5: backbone must be one of {', '.join(H5_BACKBONES)}, not {backbone!r}")
    path = Path(h5_path)
    reference = _reference_model(backbone)
    shapes = {key: value.shape for key, value in reference.state_dict().items()}
    modules = weighted_modules(reference)
    layers = read_keras_layers(path)
    match = _match_by_position if backbone == "vggface" else _match_by_name
    state: dict[str, torch.Tensor] = {}
    for layer, module in match(path, layers, modules):
        state.update(_convert_layer(path, layer, module, shapes))
    missing = sorted(set(shapes) - set(state))
    if missing:  # would mean a module type this converter does not know: a bug, said plainly
        raise ValueError(f"{path}: conversion left {backbone} tensors unset: {missing[:5]}")
    return state
