"""deepface Keras .h5 → PyTorch state dicts, checked against files written in Keras' own layout.

No TensorFlow here, so the .h5 files are written with h5py the way Keras 2's ``save_weights`` /
``save`` lays them out, from a randomly initialised PyTorch model (the writer is in helpers.py). The
Keras layer names and their order are read from deepface's Keras model source (``tf/OpenFace.py``,
``tf/VGGFace.py``), and the tensors are converted to Keras layout there, independently of the code
under test; a separate test pins the layout conventions to Keras' arithmetic.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet
from deepface.models.facial_recognition.pytorch.VGGFace import VggFaceBaseModel
from helpers import KERAS_WEIGHTED, keras_layers_in_source, keras_layers_of, openface_h5, random_openface, write_keras_h5
from torch import nn

from ferbench.backbones.h5_import import (
    H5_BACKBONES,
    import_h5,
    keras_conv_kernel_to_torch,
    keras_dense_kernel_to_torch,
    openface_keras_name,
    weighted_modules,
)

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
