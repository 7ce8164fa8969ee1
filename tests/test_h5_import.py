"""deepface Keras .h5 → PyTorch state dicts, checked against files written in Keras' own layout.

No TensorFlow here, so the .h5 files are written with h5py the way Keras 2's ``save_weights`` /
``save`` lays them out, from a randomly initialised PyTorch model. The Keras layer names and their
order are read from deepface's Keras model source (``tf/OpenFace.py``, ``tf/VGGFace.py``), and the
tensors are converted to Keras layout here, independently of the code under test; a separate test
pins the layout conventions to Keras' arithmetic.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet
from deepface.models.facial_recognition.pytorch.VGGFace import VggFaceBaseModel
from torch import nn

from ferbench.backbones.h5_import import (
    H5_BACKBONES,
    import_h5,
    keras_conv_kernel_to_torch,
    keras_dense_kernel_to_torch,
    openface_keras_name,
    weighted_modules,
)

DEEPFACE_TF = Path(importlib.util.find_spec("deepface").origin).parent / "models" / "facial_recognition" / "tf"
KERAS_WEIGHTED = {"Conv2D", "Convolution2D", "BatchNormalization", "Dense"}
# Keras 2 auto-names unnamed layers <snake_case class>_<n>.
KERAS_AUTO_NAMES = {
    "Input": "input", "Conv2D": "conv2d", "Convolution2D": "conv2d", "BatchNormalization": "batch_normalization",
    "Dense": "dense", "ZeroPadding2D": "zero_padding2d", "MaxPooling2D": "max_pooling2d",
    "AveragePooling2D": "average_pooling2d", "Activation": "activation", "Lambda": "lambda",
    "Flatten": "flatten", "Dropout": "dropout",
}


def _string(node: ast.expr) -> str:
    """A layer name written as a literal or a sum of literals (``"inception_4a_3x3_conv" + "1"``)."""
    if isinstance(node, ast.Constant):
        return node.value
    assert isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
    return _string(node.left) + _string(node.right)


def keras_layers_in_source(filename: str, function: str) -> list[tuple[str, str]]:
    """(Keras class, layer name) of every layer deepface's Keras ``function`` builds, in model order;
    unnamed layers get Keras 2's automatic names."""
    tree = ast.parse((DEEPFACE_TF / filename).read_text())
    body = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == function)
    calls = sorted(
        (node for node in ast.walk(body)
         if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in KERAS_AUTO_NAMES),
        key=lambda node: (node.lineno, node.col_offset),
    )
    counters: dict[str, int] = {}
    layers = []
    for call in calls:
        name = next((_string(kw.value) for kw in call.keywords if kw.arg == "name"), None)
        if name is None:
            auto = KERAS_AUTO_NAMES[call.func.id]
            counters[auto] = counters.get(auto, 0) + 1
            name = f"{auto}_{counters[auto]}"
        layers.append((call.func.id, name))
    return layers


def keras_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """A PyTorch layer's tensors as Keras stores them (written out here, not taken from the code under test)."""
    numpy = {name: tensor.detach().numpy().copy() for name, tensor in module.state_dict().items()}
    if isinstance(module, nn.BatchNorm2d):
        return {"gamma": numpy["weight"], "beta": numpy["bias"],
                "moving_mean": numpy["running_mean"], "moving_variance": numpy["running_var"]}
    if isinstance(module, nn.Conv2d):  # (out, in, h, w) → (h, w, in, out)
        return {"kernel": np.ascontiguousarray(numpy["weight"].transpose(2, 3, 1, 0)), "bias": numpy["bias"]}
    assert isinstance(module, nn.Linear)  # (out, in) → (in, out)
    return {"kernel": np.ascontiguousarray(numpy["weight"].T), "bias": numpy["bias"]}


def keras_layers_of(model: nn.Module, source: list[tuple[str, str]]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Pair deepface's Keras layers (source order) with the PyTorch modules holding weights (registration order)."""
    modules = [model.get_submodule(name) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert sum(cls in KERAS_WEIGHTED for cls, _ in source) == len(modules)
    pending = iter(modules)
    return [(name, keras_arrays(next(pending)) if cls in KERAS_WEIGHTED else {}) for cls, name in source]


def write_keras_h5(path: Path, layers: list[tuple[str, dict[str, np.ndarray]]], full_model: bool = False) -> Path:
    """Write ``layers`` as Keras 2 does: ``layer_names`` on the root (``model_weights`` for a full save),
    one group per layer with ``weight_names`` and datasets ``<layer>/<layer>/<weight>:0``."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights") if full_model else handle
        if full_model:
            handle.attrs["model_config"] = b'{"class_name": "Model"}'
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name, weights in layers:
            group = root.create_group(name)
            weight_names = [f"{name}/{role}:0".encode() for role in weights]
            group.attrs["weight_names"] = np.array(weight_names) if weight_names else np.array([], dtype="S1")
            for role, array in weights.items():
                group.create_dataset(f"{name}/{role}:0", data=array)
    return path


def random_openface(seed: int = 0) -> OpenFaceNet:
    """OpenFaceNet with every tensor random, BatchNorm included (its defaults, ones and zeros, would hide swaps)."""
    torch.manual_seed(seed)
    model = OpenFaceNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def openface_h5(path: Path, model: OpenFaceNet, full_model: bool = False, drop: str | None = None) -> Path:
    layers = keras_layers_of(model, keras_layers_in_source("OpenFace.py", "load_model"))
    return write_keras_h5(path, [layer for layer in layers if layer[0] != drop], full_model)


def assert_same_model(state: dict[str, torch.Tensor], reference: nn.Module, fresh: nn.Module, x: torch.Tensor | None) -> None:
    """``state`` loads strictly into ``fresh``, every tensor equals the reference's, and so do outputs on ``x``."""
    fresh.load_state_dict(state, strict=True)
    for key, tensor in reference.state_dict().items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    if x is not None:
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), reference.eval()(x))


def test_openface_module_names_map_to_deepface_keras_layers_in_order():
    keras_names = [name for cls, name in keras_layers_in_source("OpenFace.py", "load_model") if cls in KERAS_WEIGHTED]
    assert len(keras_names) == 75  # stem 6, inception blocks 12+12+8+12+8+8+8, dense 1
    assert [openface_keras_name(m) for m in weighted_modules(OpenFaceNet())] == keras_names
    assert keras_names[:7] == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "inception_3a_3x3_conv1"]
    assert keras_names[-1] == "dense_layer"


def test_layout_conversions_reproduce_keras_arithmetic():
    """Keras Conv2D: out[y, x, o] = Σ_{h,w,i} in[y+h, x+w, i]·K[h, w, i, o] + b[o]; Dense: x @ K + b."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)  # NHWC
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)  # HWIO, non-square to catch an h/w swap
    bias = rng.standard_normal(4).astype(np.float32)
    expected = np.zeros((2, 4, 6, 4), dtype=np.float64) + bias
    for h in range(3):
        for w in range(2):
            expected += np.einsum("nyxi,io->nyxo", image[:, h:h + 4, w:w + 6, :], kernel[h, w])
    got = F.conv2d(torch.from_numpy(image).permute(0, 3, 1, 2), keras_conv_kernel_to_torch(kernel), torch.from_numpy(bias))
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)

    features, dense = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    got = F.linear(torch.from_numpy(features), keras_dense_kernel_to_torch(dense), torch.from_numpy(bias[:2]))
    np.testing.assert_allclose(got.numpy(), features @ dense + bias[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("full_model", [False, True], ids=["save_weights", "model_save"])
def test_openface_h5_round_trip_is_bit_identical(tmp_path, full_model):
    reference = random_openface()
    path = openface_h5(tmp_path / "openface_weights.h5", reference, full_model)
    state = import_h5(path, "openface")
    assert_same_model(state, reference, OpenFaceNet(), torch.rand(2, 3, 96, 96))


def test_vggface_h5_round_trip_is_bit_identical(tmp_path):
    """The full 145M-parameter network once (≈ 580 MB file), so that positions 1..16 all line up.
    Bit-identical tensors after a strict load imply identical outputs; the 224-px forward passes
    (5 s on a laptop) are left to the OpenFace round trips."""
    torch.manual_seed(3)
    reference = VggFaceBaseModel(include_top=True).eval()
    layers = keras_layers_of(reference, keras_layers_in_source("VGGFace.py", "base_model"))
    assert [name for name, weights in layers if weights][-3:] == ["conv2d_14", "conv2d_15", "conv2d_16"]
    path = write_keras_h5(tmp_path / "vgg_face_weights.h5", layers)
    del layers
    state = import_h5(path, "vggface")
    assert_same_model(state, reference, VggFaceBaseModel(include_top=True), None)


def test_missing_layer_is_named(tmp_path):
    path = openface_h5(tmp_path / "openface_weights.h5", random_openface(), drop="inception_4a_pool_bn")
    expected = r"openface_weights\.h5: layer 'inception_4a_pool_bn' \(for OpenFace's inception_4a\.branch_pool\.bn\) is missing"
    with pytest.raises(ValueError, match=expected):
        import_h5(path, "openface")


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    layers = keras_layers_of(random_openface(), keras_layers_in_source("OpenFace.py", "load_model"))
    layers = [(name, {**w, "kernel": np.zeros((3, 3, 64, 64), np.float32)} if name == "conv2" else w) for name, w in layers]
    path = write_keras_h5(tmp_path / "openface_weights.h5", layers)
    expected = r"openface_weights\.h5: layer 'conv2' kernel: expected shape \(1, 1, 64, 64\) .*found \(3, 3, 64, 64\)"
    with pytest.raises(ValueError, match=expected):
        import_h5(path, "openface")


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = openface_h5(tmp_path / "openface_weights.h5", random_openface())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted download
    with pytest.raises(ValueError, match=r"openface_weights\.h5: not a readable Keras HDF5 file"):
        import_h5(path, "openface")


def test_vggface_file_with_too_few_layers_names_the_first_missing_one(tmp_path):
    shapes = [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128)]  # conv1_1, conv1_2, conv2_1 only
    layers = [(f"conv2d_{i + 1}", {"kernel": np.zeros(s, np.float32), "bias": np.zeros(s[-1], np.float32)})
              for i, s in enumerate(shapes)]
    path = write_keras_h5(tmp_path / "vgg_face_weights.h5", layers)
    expected = r"vgg_face_weights\.h5: 3 layers with weights, VGG-Face has 16 \(conv1_1 … fc8\): the layer for 'conv2_2' is missing"
    with pytest.raises(ValueError, match=expected):
        import_h5(path, "vggface")


def test_openface_file_is_not_vggface(tmp_path):
    path = openface_h5(tmp_path / "openface_weights.h5", random_openface())
    with pytest.raises(ValueError, match=r"openface_weights\.h5: 75 layers .* unexpected 'inception_3a_1x1_conv' and 58 more"):
        import_h5(path, "vggface")


def test_files_that_are_not_keras_weights_are_refused(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.h5: no 'layer_names' attribute"):
        import_h5(plain, "openface")
    torch_file = tmp_path / "openface_weights.pth"
    torch.save(OpenFaceNet().state_dict(), torch_file)
    with pytest.raises(ValueError, match=r"openface_weights\.pth: not a readable Keras HDF5 file"):
        import_h5(torch_file, "openface")
    with pytest.raises(ValueError, match="backbone must be one of vggface, openface"):
        import_h5(plain, "resnet50")
    assert H5_BACKBONES == ("vggface", "openface")
