"""Plain helpers shared by several test modules (``from helpers import ...``): dataset-file writers, the
Keras-layout .h5 writer, readers of resumed experiments, an HTML reader and the tiny studies' settings.

Not a test module: no test module imports another one (checked by test_import_graph.py). pytest puts
this folder on ``sys.path`` when it loads tests/conftest.py (rootdir-relative ``prepend`` import mode:
tests/ has no ``__init__.py``), so ``pytest`` and ``python -m pytest`` both find this module.
"""

from __future__ import annotations

import ast
import importlib.util
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- dataset files (FER2013 CSV, image folders, RAF-DB)

CANONICAL = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
USAGES = ("Training", "PublicTest", "PrivateTest")
RAFDB_LIST = ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 7", "test_0002.jpg 4"]


def write_image(path: Path, value: int = 0, size: tuple[int, int] = (8, 8), colour: bool = False) -> np.ndarray:
    """A PNG/JPG/BMP whose pixels are ``value`` plus a small gradient; returns what was written."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (value + np.add.outer(np.arange(size[0]), np.arange(size[1])) % 3).astype(np.uint8)
    if colour:
        pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
    Image.fromarray(pixels).save(path)
    return pixels


def write_class_tree(root: Path, classes: dict[str, int], value_of=lambda name: 0, name="{i:03d}.png") -> None:
    """``root/<class>/<name>`` with ``classes[class]`` images each, pixel base ``value_of(class)``."""
    for folder, count in classes.items():
        for i in range(count):
            write_image(root / folder / name.format(i=i), value_of(folder))


def by_value(folder: str) -> int:
    """The pixel base ``write_image`` gets for a class folder: 10 × its canonical class index."""
    canonical = {"anger": "angry", "happiness": "happy", "surprised": "surprise", "joy": "happy", "sadness": "sad"}
    return 10 * CANONICAL.index(canonical.get(folder.lower(), folder.lower()))


def write_rafdb(root: Path, lines=RAFDB_LIST, grey: tuple[str, ...] = ()) -> None:
    """A RAF-DB basic layout: EmoLabel/list_patition_label.txt and Image/aligned/<stem>_aligned.jpg."""
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        stem = line.split()[0].removesuffix(".jpg")
        write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", size=(10, 10), colour=stem not in grey)


def write_fer_csv(path, labels, side=4, header="emotion,pixels,Usage", sep=",", seed=0):
    """A FER2013-style CSV with random pixels; returns the images it holds (N, side, side)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(len(labels), side * side))
    rows = [header]
    for i, (label, pixels) in enumerate(zip(labels, images)):
        fields = {"emotion": str(label), "pixels": " ".join(map(str, pixels)), "Usage": USAGES[i % 3]}
        rows.append(sep.join(fields[name.strip()] for name in header.split(",")))
    path.write_text("\n".join(rows) + "\n")
    return images.reshape(-1, side, side).astype(np.uint8)


# --------------------------------------------------------------------------- deepface's Keras .h5 layout, written with h5py
#
# No TensorFlow here, so the .h5 files are written the way Keras 2's ``save_weights`` / ``save`` lays them
# out, from a randomly initialised PyTorch model. The Keras layer names and their order are read from
# deepface's Keras model source (``tf/OpenFace.py``, ``tf/VGGFace.py``), and the tensors are converted to
# Keras layout here, independently of the code under test.

KERAS_WEIGHTED = {"Conv2D", "Convolution2D", "BatchNormalization", "Dense"}
# Keras 2 auto-names unnamed layers <snake_case class>_<n>.
KERAS_AUTO_NAMES = {
    "Input": "input", "Conv2D": "conv2d", "Convolution2D": "conv2d", "BatchNormalization": "batch_normalization",
    "Dense": "dense", "ZeroPadding2D": "zero_padding2d", "MaxPooling2D": "max_pooling2d",
    "AveragePooling2D": "average_pooling2d", "Activation": "activation", "Lambda": "lambda",
    "Flatten": "flatten", "Dropout": "dropout",
}


def deepface_tf() -> Path:
    """deepface's folder of Keras model sources."""
    return Path(importlib.util.find_spec("deepface").origin).parent / "models" / "facial_recognition" / "tf"


def _string(node: ast.expr) -> str:
    """A layer name written as a literal or a sum of literals (``"inception_4a_3x3_conv" + "1"``)."""
    if isinstance(node, ast.Constant):
        return node.value
    assert isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
    return _string(node.left) + _string(node.right)


def keras_layers_in_source(filename: str, function: str) -> list[tuple[str, str]]:
    """(Keras class, layer name) of every layer deepface's Keras ``function`` builds, in model order;
    unnamed layers get Keras 2's automatic names."""
    tree = ast.parse((deepface_tf() / filename).read_text())
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


def keras_arrays(module) -> dict[str, np.ndarray]:
    """A PyTorch layer's tensors as Keras stores them (written out here, not taken from the code under test)."""
    from torch import nn

    numpy = {name: tensor.detach().numpy().copy() for name, tensor in module.state_dict().items()}
    if isinstance(module, nn.BatchNorm2d):
        return {"gamma": numpy["weight"], "beta": numpy["bias"],
                "moving_mean": numpy["running_mean"], "moving_variance": numpy["running_var"]}
    if isinstance(module, nn.Conv2d):  # (out, in, h, w) → (h, w, in, out)
        return {"kernel": np.ascontiguousarray(numpy["weight"].transpose(2, 3, 1, 0)), "bias": numpy["bias"]}
    assert isinstance(module, nn.Linear)  # (out, in) → (in, out)
    return {"kernel": np.ascontiguousarray(numpy["weight"].T), "bias": numpy["bias"]}


def keras_layers_of(model, source: list[tuple[str, str]]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Pair deepface's Keras layers (source order) with the PyTorch modules holding weights (registration order)."""
    modules = [model.get_submodule(name) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert sum(cls in KERAS_WEIGHTED for cls, _ in source) == len(modules)
    pending = iter(modules)
    return [(name, keras_arrays(next(pending)) if cls in KERAS_WEIGHTED else {}) for cls, name in source]


def write_keras_h5(path: Path, layers: list[tuple[str, dict[str, np.ndarray]]], full_model: bool = False) -> Path:
    """Write ``layers`` as Keras 2 does: ``layer_names`` on the root (``model_weights`` for a full save),
    one group per layer with ``weight_names`` and datasets ``<layer>/<layer>/<weight>:0``."""
    import h5py

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


def random_openface(seed: int = 0):
    """deepface's OpenFaceNet with every tensor random, BatchNorm included (its defaults, ones and zeros,
    would hide swaps)."""
    import torch
    from deepface.models.facial_recognition.pytorch.OpenFace import OpenFaceNet
    from torch import nn

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


def openface_h5(path: Path, model, full_model: bool = False, drop: str | None = None) -> Path:
    """``model`` (an OpenFaceNet) as deepface's Keras OpenFace .h5 file, without layer ``drop`` if given."""
    layers = keras_layers_of(model, keras_layers_in_source("OpenFace.py", "load_model"))
    return write_keras_h5(path, [layer for layer in layers if layer[0] != drop], full_model)


# --------------------------------------------------------------------------- resumed experiments


def resume_points(experiment: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """arm → the epoch ``--resume`` must continue at: one after its newest checkpoint whose weights and
    history are both intact (what the trial restores; a cut one is passed over)."""
    from ferbench.harness.study.checkpoints import checkpoint_dirs, read_checkpoint

    points = {}
    for folder in experiment.glob("small_cnn_*"):
        arm = folder.name.rsplit("_", 2)[0]
        restored = next(filter(None, map(read_checkpoint, checkpoint_dirs(folder))), None)
        if restored is not None and arm not in skip:
            points[arm] = restored[0]["epoch"] + 1
    return points


def assert_continued(trials, points: dict[str, int]) -> None:
    """Each arm in ``points`` continued at its epoch (``trials.resumed_at_epochs``), not from scratch."""
    resumed = {arm: {int(float(e)) for e in str(value).split() if e != "nan"}
               for arm, value in zip(trials.arm_id, trials.resumed_at_epochs)}
    for arm, epoch in points.items():
        assert epoch in resumed[arm], (arm, epoch, resumed)


def only_trial_folder(outcome, arm: str) -> Path:
    """The arm's one trial folder in a study's outcome (a study run once, not resumed)."""
    (folder,) = [p for p in outcome.experiment_dir.glob(f"{arm}_*") if p.is_dir()]
    return folder


# --------------------------------------------------------------------------- HTML pages


class Page(HTMLParser):
    """What the tests look at in a page: images, tables (cell texts per row), links, headings, attributes."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.body: dict = {}
        self.headers: list[dict] = []  # attributes of every <th>
        self.dts: list[str] = []
        self._cell: list[str] | None = None
        self._dt: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "body":
            self.body = attrs
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
            if tag == "th":
                self.headers.append(attrs)
        elif tag == "dt":
            self._dt = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "dt" and self._dt is not None:
            self.dts.append("".join(self._dt).strip())
            self._dt = None

    def handle_data(self, data):
        for buffer in (self._cell, self._dt):
            if buffer is not None:
                buffer.append(data)


# --------------------------------------------------------------------------- tiny studies' settings

# The pseudo-labelling studies (test_pseudo_label.py, test_unlabeled_pool.py).
PL_ARM = "small_cnn_random_pseudo_label_s0"
PL_STUDY = [
    "data.num_images=600", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "train.augment.enabled=false",
    "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline,pseudo_label]", "grid.exclude=[]",
    "split.unlabeled_fraction=0.3", "pseudo_label.threshold=0.3", "pseudo_label.max_rounds=2",
    "pseudo_label.epochs_per_round=1", "train.lr=3e-3", "resources.cpu=1", "run.keep_checkpoints=20",
]

# The session's reference experiment (conftest's ``reference_study``): 2 backbones × 2 inits × 2 seeds × 3 epochs
# on 240 SynthFER images of 24×24 px, at a learning rate small enough that a pretrained arm stays near its
# weights, and pseudo-labelling on the random small_cnn whose teacher is sure of nothing (threshold 0.999999:
# round 0 only). The unlabeled share is set explicitly, so that the baseline-only re-runs below split the data
# as the reference does. One sample test image per class in the report (its figure grows with samples ×
# models). Two trials at a time (whatever the machine), one after another in two reused workers.
REFERENCE = [
    "data.num_images=240", "data.image_size=24", "train.epochs=3", "train.batch_size=32",
    "grid.backbone=[small_cnn,mobilenet_v1]", "grid.init=[pretrained,random]", "grid.seed=[0,1]",
    "grid.variant=[baseline,pseudo_label]",
    "grid.exclude=[{backbone: mobilenet_v1, variant: pseudo_label}, {init: pretrained, variant: pseudo_label}]",
    "split.unlabeled_fraction=0.1", "pseudo_label.max_rounds=1", "pseudo_label.epochs_per_round=1",
    "pseudo_label.threshold=0.999999", "train.lr=1e-4", "report.samples_per_class=1", "resources.cpu=1",
    "weights.source=published", "run.allow_unavailable=false", "run.max_concurrent=2",
]
# The reference's random small_cnn baseline arms alone (seeds 0 and 1): a study of these gives the reference's numbers.
SMALL = [*REFERENCE, "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline]", "grid.exclude=[]"]
REFERENCE_BACKBONES = ("small_cnn", "mobilenet_v1")
REFERENCE_ARMS = [f"{backbone}_{init}_baseline_s{seed}" for backbone in REFERENCE_BACKBONES
                  for init in ("pretrained", "random") for seed in (0, 1)] + [f"small_cnn_random_pseudo_label_s{s}" for s in (0, 1)]


def reference_weight_files(folder: Path) -> list[str]:
    """The reference's pretrained weights, as users bring them (other seeds than the arms): small_cnn's own
    state dict (.pth) and timm's ImageNet-shaped MobileNet V1 (1000 classes, .safetensors). Returns the
    ``weights.files.<backbone>=<path>`` overrides."""
    import timm
    import torch
    from safetensors.torch import save_file

    from ferbench.backbones import create_backbone

    torch.manual_seed(99)
    small_cnn = folder / "small_cnn.pth"
    torch.save(create_backbone("small_cnn", 7).state_dict(), small_cnn)
    torch.manual_seed(123)
    mobilenet = folder / "mnv1.safetensors"
    save_file(timm.create_model("mobilenetv1_100", num_classes=1000).state_dict(), str(mobilenet))
    return [f"weights.files.small_cnn={small_cnn}", f"weights.files.mobilenet_v1={mobilenet}"]
