"""Record the Keras layer lists of the Smelyakov study's four networks (one JSON file each).

The paper froze "all layers except the last 4" of Keras models, and Keras counts every layer
(padding, activation, pooling, dropout, flatten, add, concatenate, lambda too). FERBench trains
PyTorch ports of those networks, so it needs the Keras list once, with the PyTorch module each
layer corresponds to. This script builds the real Keras models and writes that list; the package
ships only its output, and ``tests/test_keras_layers.py`` checks the output against the PyTorch
models. TensorFlow and deepface are not FERBench dependencies: run this in a throw-away environment
(deepface 0.0.103 imports werkzeug without declaring it):

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 deepface==0.0.103 werkzeug
    /tmp/tfenv/bin/python backbones/keras_layers/record.py   # rewrites backbones/keras_layers/*.json

The models come from the installed packages, nothing is downloaded: VGG-Face and OpenFace from
deepface's Keras code with the weight download and loading patched out (the layer list does not
depend on the weights, and OpenFace's architecture is only built inside ``load_model``). VGG-Face's
2022 descriptor, the paper's, is formed from ``base_model()`` as deepface's ``loadModel`` did then
(a comment in today's ``load_model``); deepface 0.0.103 gives the same lists as its 2022 code
(commit 531522f, which the files' ``source`` names). ResNet-50 and MobileNet come from
``keras.applications`` with ``include_top=False`` (``weights=None``), which give the parameter
counts the paper quotes.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
MOBILENET_STAGES = (1, 2, 2, 6, 2)  # depthwise-separable blocks per stage of timm's mobilenetv1_100
VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
             "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8")


def vggface_torch(convs_seen: list[str]) -> Callable[[str, str], str | None]:
    """Sequential VGG-Face has auto-named layers: its convolutions map in order to deepface's."""
    def mapping(name: str, keras_class: str) -> str | None:
        if keras_class != "Conv2D":
            return None
        convs_seen.append(name)
        return f"trunk.{VGG_CONVS[len(convs_seen) - 1]}"
    return mapping


def openface_torch(name: str, keras_class: str) -> str | None:
    """deepface's Keras names → its PyTorch OpenFaceNet (ConvBn blocks, branch_* Sequentials)."""
    if name == "dense_layer":
        return "trunk.dense_layer"
    if match := re.fullmatch(r"(conv|bn)([123])", name):
        return f"trunk.conv{match[2]}.{match[1]}"
    if match := re.fullmatch(r"inception_(\w\w)_(3x3|5x5)_(conv|bn)([12])", name):
        return f"trunk.inception_{match[1]}.branch_{match[2]}.{int(match[4]) - 1}.{match[3]}"
    if match := re.fullmatch(r"inception_(\w\w)_(pool|1x1)_(conv|bn)", name):
        return f"trunk.inception_{match[1]}.branch_{match[2]}.{match[3]}"
    return None


def resnet50_torch(name: str, keras_class: str) -> str | None:
    """keras.applications ResNet50 → timm resnet50."""
    if name in ("conv1_conv", "conv1_bn"):
        return {"conv1_conv": "conv1", "conv1_bn": "bn1"}[name]
    match = re.fullmatch(r"conv(\d)_block(\d)_(\d)_(conv|bn)", name)
    if not match:
        return None
    stage, block, index, kind = int(match[1]) - 1, int(match[2]) - 1, int(match[3]), match[4]
    if index == 0:  # the projection shortcut
        return f"layer{stage}.{block}.downsample.{0 if kind == 'conv' else 1}"
    return f"layer{stage}.{block}.{kind}{index}"


def mobilenet_torch(name: str, keras_class: str) -> str | None:
    """keras.applications MobileNet → timm mobilenetv1_100 (blocks.<stage>.<block>)."""
    if name in ("conv1", "conv1_bn"):
        return {"conv1": "conv_stem", "conv1_bn": "bn1"}[name]
    match = re.fullmatch(r"conv_(dw|pw)_(\d+)(_bn)?", name)
    if not match:
        return None
    position = int(match[2]) - 1
    stage = 0
    while position >= MOBILENET_STAGES[stage]:
        position -= MOBILENET_STAGES[stage]
        stage += 1
    module = {("dw", None): "conv_dw", ("dw", "_bn"): "bn1", ("pw", None): "conv_pw", ("pw", "_bn"): "bn2"}[(match[1], match[3])]
    return f"blocks.{stage}.{position}.{module}"


def layer_rows(model, to_torch: Callable[[str, str], str | None]) -> list[dict]:
    rows = []
    for index, layer in enumerate(model.layers):
        trainable = sum(int(w.shape.num_elements()) for w in layer.trainable_weights)
        non_trainable = sum(int(w.shape.num_elements()) for w in layer.non_trainable_weights)
        keras_class = type(layer).__name__
        torch_module = to_torch(layer.name, keras_class)
        if (trainable + non_trainable > 0) != (torch_module is not None):
            raise SystemExit(f"{layer.name} ({keras_class}, {trainable + non_trainable} params): no mapping rule fits")
        rows.append({"index": index, "name": layer.name, "class": keras_class, "params": trainable + non_trainable,
                     "trainable": trainable, "non_trainable": non_trainable, "torch": torch_module})
    return rows


def record(backbone: str, model, to_torch, source: str, output: str, note: str = "") -> dict:
    import tensorflow as tf
    import tf_keras

    rows = layer_rows(model, to_torch)
    return {
        "backbone": backbone,
        "source": source,
        "output": output,
        "note": note,
        "recorded_with": f"tensorflow {tf.__version__}, tf-keras {tf_keras.__version__}",
        "total_params": int(model.count_params()),
        "trainable_params": sum(r["trainable"] for r in rows),
        "non_trainable_params": sum(r["non_trainable"] for r in rows),
        "layers": rows,
    }


def vggface_2022():
    """deepface's 2022 descriptor: ``base_model()`` up to fc8, flattened (its softmax left out)."""
    from deepface.models.facial_recognition.tf import VGGFace
    from tf_keras.models import Model

    model = VGGFace.base_model()
    return Model(inputs=model.layers[0].input, outputs=model.layers[-2].output)


def without_weights(load_model: Callable[[], object]) -> object:
    """A deepface ``load_model`` with the weight download and ``load_weights`` patched out."""
    from unittest import mock

    from deepface.commons import weight_utils

    with mock.patch.object(weight_utils, "download_weights_if_necessary", return_value="unused.h5"), \
            mock.patch.object(weight_utils, "load_model_weights", side_effect=lambda model, weight_file: model):
        return load_model()


def build_all() -> dict[str, dict]:
    import tf_keras
    from deepface.models.facial_recognition.tf import OpenFace, VGGFace

    deepface = "deepface 531522f (2022-12-12)"
    builders = {
        "vggface": lambda: record(
            "vggface", vggface_2022(), vggface_torch([]),
            f"{deepface} VGGFace.loadModel(): Model(inputs=model.layers[0].input, outputs=model.layers[-2].output)",
            "Flatten(fc8): 2,622-d", "the descriptor of 2022, the paper's"),
        "vggface_fc7": lambda: record(
            "vggface", without_weights(VGGFace.load_model), vggface_torch([]),
            "deepface since 2024: Flatten()(model.layers[-5].output)",
            "Flatten(ReLU(fc7)): 4,096-d", "deepface's descriptor today"),
        "openface": lambda: record(
            "openface", without_weights(OpenFace.load_model), openface_torch, f"{deepface} OpenFace.loadModel()",
            "l2_normalize(Dense(128)): 128-d"),
        "resnet50": lambda: record(
            "resnet50", tf_keras.applications.ResNet50(include_top=False, weights=None), resnet50_torch,
            "keras.applications.ResNet50(include_top=False)", "conv5_block3_out: 2,048 maps"),
        "mobilenet_v1": lambda: record(
            "mobilenet_v1", tf_keras.applications.MobileNet(include_top=False, weights=None), mobilenet_torch,
            "keras.applications.MobileNet(include_top=False)", "conv_pw_13_relu: 1,024 maps"),
    }
    recorded = {}
    for key, build in builders.items():
        tf_keras.backend.clear_session()  # auto-generated names (conv2d, conv2d_1, …) start afresh
        recorded[key] = build()
    return recorded


def to_json(data: dict) -> str:
    """Indented JSON with one line per layer, so a diff shows which layers changed."""
    head = json.dumps({k: v for k, v in data.items() if k != "layers"}, indent=1)[:-2]
    layers = ",\n  ".join(json.dumps(row) for row in data["layers"])
    return f"{head},\n \"layers\": [\n  {layers}\n ]\n}}\n"


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # deepface's tensorflow.keras is then tf-keras (Keras 2), as in 2022
    for key, data in build_all().items():
        path = HERE / f"{key}.json"
        path.write_text(to_json(data))
        print(f"{path.name}: {len(data['layers'])} layers, {data['total_params']:,} params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
