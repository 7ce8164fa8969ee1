"""The Keras layer lists of the Smelyakov study's networks, as recorded from the real Keras models.

Smelyakov et al. trained Keras models: "the last layer was excluded, and all layers except the last
4 were frozen". Keras counts every layer (padding, activation, pooling, dropout, flatten, add,
concatenate, lambda as well as convolutions and BatchNorm), so "the last 4" are often
parameter-free and few parameters train. Each ``<key>.json`` here lists one Keras model's layers
in ``model.layers`` order with their parameter counts and the PyTorch module of FERBench's backbone
each corresponds to (``null`` for parameter-free layers); ``record.py`` wrote them from TensorFlow,
and ``tests/test_keras_layers.py`` checks them against the PyTorch models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

VGGFACE_LIST = {"fc8": "vggface", "fc7": "vggface_fc7"}  # model.vggface_descriptor → recorded list
RECORDED_BACKBONES = ("mobilenet_v1", "openface", "resnet50", "vggface")


@dataclass(frozen=True)
class KerasLayer:
    index: int
    name: str
    keras_class: str
    params: int  # Keras' count_params: trainable + non-trainable (BatchNorm moving statistics)
    trainable: int
    non_trainable: int
    torch: str | None  # the PyTorch module path in the backbone create_backbone builds, None when parameter-free


@dataclass(frozen=True)
class KerasLayerList:
    key: str
    backbone: str
    source: str
    output: str
    total_params: int
    layers: tuple[KerasLayer, ...]

    @property
    def paper_layers(self) -> tuple[KerasLayer, ...]:
        """The model's layers with "the last layer excluded" (the InputLayer is one of them, as in Keras)."""
        return self.layers[:-1]

    def last_k(self, k: int) -> tuple[KerasLayer, ...]:
        """The last ``k`` layers after excluding the last one: what trains under the paper's freezing."""
        return self.paper_layers[len(self.paper_layers) - k:] if k > 0 else ()

    def trainable_params(self, k: int) -> int:
        """Keras' trainable parameters of the last ``k`` layers (BatchNorm γ, β; conv biases Keras has)."""
        return sum(layer.trainable for layer in self.last_k(k))

    def torch_modules(self, k: int) -> list[str]:
        return [layer.torch for layer in self.last_k(k) if layer.torch is not None]


@lru_cache(maxsize=None)
def load_keras_layers(key: str) -> KerasLayerList:
    """One recorded list by file key (``vggface``, ``vggface_fc7``, ``openface``, ``resnet50``, ``mobilenet_v1``)."""
    data = json.loads(resources.files(__name__).joinpath(f"{key}.json").read_text())
    layers = tuple(
        KerasLayer(row["index"], row["name"], row["class"], row["params"], row["trainable"], row["non_trainable"], row["torch"])
        for row in data["layers"]
    )
    return KerasLayerList(key, data["backbone"], data["source"], data["output"], data["total_params"], layers)


def keras_layer_list(backbone: str, vggface_descriptor: str = "fc8") -> KerasLayerList | None:
    """The recorded list of ``backbone`` (VGG-Face: the one of its descriptor), None when there is none."""
    if backbone not in RECORDED_BACKBONES:
        return None
    return load_keras_layers(VGGFACE_LIST[vggface_descriptor] if backbone == "vggface" else backbone)
