"""The recorded Keras layer lists against FERBench's PyTorch backbones, and the Smelyakov study's
reading of them: keras_last_k, VGG-Face's fc8 descriptor, OpenFace without its L2 normalisation,
ResNet-50 and MobileNet without their last ReLU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ferbench.backbones import create_backbone
from ferbench.backbones.freezing import FreezePlan, apply_freeze
from ferbench.backbones.keras_layers import RECORDED_BACKBONES, keras_layer_list, load_keras_layers
from ferbench.backbones.registry import BackboneOptions, get_backbone_info
from ferbench.harness.cli.main import main
from ferbench.harness.spec import SpecError, load_spec

KEYS = ("vggface", "vggface_fc7", "openface", "resnet50", "mobilenet_v1")
# Keras' count_params of each whole model: the paper's counts (OpenFace, ResNet-50, MobileNet) and
# DESIGN.md's for VGG-Face's two descriptors.
KERAS_TOTALS = {"vggface": 145_002_878, "vggface_fc7": 134_260_544, "openface": 3_743_280,
                "resnet50": 23_587_712, "mobilenet_v1": 3_228_864}
PAPER = BackboneOptions(vggface_descriptor="fc8", openface_l2_norm=False, resnet_mobilenet_final_relu="drop")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """One build per backbone; VGG-Face with fc8, which holds every module both VGG lists map to."""
    torch.manual_seed(0)
    return {name: create_backbone(name, 7, options=PAPER) for name in RECORDED_BACKBONES}


def _model_for(key: str, models: dict[str, nn.Module]) -> nn.Module:
    return models[load_keras_layers(key).backbone]


def _keras_only(module: nn.Module, conv_bias: bool) -> tuple[int, int]:
    """(trainable, non-trainable) parameters Keras has beyond the PyTorch module's."""
    stats = 0
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        stats = module.running_mean.numel() + module.running_var.numel()
    bias = module.out_channels if conv_bias and isinstance(module, nn.Conv2d) and module.bias is None else 0
    return bias, stats


@pytest.mark.parametrize("key", KEYS)
def test_recorded_totals_are_the_papers_counts(key):
    layers = load_keras_layers(key)
    assert layers.total_params == KERAS_TOTALS[key]
    assert sum(layer.params for layer in layers.layers) == KERAS_TOTALS[key]
    assert layers.layers[0].keras_class == "InputLayer" and [layer.index for layer in layers.layers] == list(range(len(layers.layers)))


@pytest.mark.parametrize("key", KEYS)
def test_every_parametrised_keras_layer_is_its_pytorch_module(key, models):
    """Parameter-free layers map to nothing; every other one to a module of the same size (Keras adding
    BatchNorm moving statistics, and conv biases where timm's convs lack them), and together they cover
    the whole trunk, each module once."""
    layers, model = load_keras_layers(key), _model_for(key, models)
    conv_bias = get_backbone_info(layers.backbone).keras_conv_bias
    mapped = []
    for layer in layers.layers:
        assert (layer.params > 0) == (layer.torch is not None), layer.name
        if layer.torch is None:
            continue
        module = model.get_submodule(layer.torch)
        torch_params = sum(p.numel() for p in module.parameters(recurse=False))
        bias, stats = _keras_only(module, conv_bias)
        assert (layer.trainable, layer.non_trainable) == (torch_params + bias, stats), layer.name
        assert ("BatchNormalization" == layer.keras_class) == isinstance(module, nn.BatchNorm2d), layer.name
        assert ("Dense" == layer.keras_class) == isinstance(module, nn.Linear), layer.name
        mapped.append(module)
    head = set(model.get_classifier().modules())
    trunk = [m for m in model.modules() if m not in head and list(m.parameters(recurse=False))]
    if key == "vggface_fc7":  # today's descriptor ends at fc7: the fc8 build's fc8 is not in it
        trunk.remove(model.trunk.fc8)
    assert len(mapped) == len(set(map(id, mapped))) == len(trunk)
    assert set(map(id, mapped)) == set(map(id, trunk))


@pytest.mark.parametrize("key", KEYS)
def test_recorded_mapping_is_what_the_recorders_rules_give(key):
    """record.py's rules (pure Python) reproduce the file: the file was not edited by hand."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backbones" / "keras_layers"))
    try:
        import record
    finally:
        sys.path.pop(0)
    rules = {"openface": record.openface_torch, "resnet50": record.resnet50_torch, "mobilenet_v1": record.mobilenet_torch}
    rule = rules.get(key) or record.vggface_torch([])
    assert [rule(layer.name, layer.keras_class) for layer in load_keras_layers(key).layers] == \
        [layer.torch for layer in load_keras_layers(key).layers]


# --- keras_last_k: what trains -------------------------------------------------------------------

EXPECTED_TRAINING = {  # the paper's reading: the last 4 Keras layers after excluding the last one
    "vggface": (["trunk.fc7", "trunk.fc8"], 27_523_646, 27_523_646),  # dropout, fc7, dropout, fc8
    "openface": (["trunk.dense_layer"], 94_336, 94_336),  # concatenate, average pooling, flatten, Dense(128)
    "resnet50": (["layer4.2.conv3", "layer4.2.bn3"], 1_054_720, 1_052_672),  # 2_relu, 3_conv, 3_bn, add
    "mobilenet_v1": (["blocks.4.1.bn1", "blocks.4.1.conv_pw", "blocks.4.1.bn2"], 1_052_672, 1_052_672),  # dw_13_bn, dw_13_relu, pw_13, pw_13_bn
}


@pytest.mark.parametrize("name", RECORDED_BACKBONES)
def test_keras_last_k_trains_exactly_the_mapped_modules_and_the_head(name, models):
    model = models[name]
    modules, keras_count, torch_count = EXPECTED_TRAINING[name]
    assert model.keras_layers.torch_modules(4) == modules
    assert model.keras_layers.trainable_params(4) == keras_count
    apply_freeze(model, FreezePlan("keras_last_k", k=4), 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"{n}.{p}" for n, m in model.named_modules() if m is model.get_classifier() for p, _ in m.named_parameters()}
    expected = {f"{path}.{p}" for path in modules for p, _ in model.get_submodule(path).named_parameters()}
    assert trainable == expected | head
    backbone_trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in head)
    assert backbone_trainable == torch_count
    apply_freeze(model, FreezePlan("keras_last_k", k=0), 1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head


def test_keras_layer_counts_after_excluding_the_last_layer():
    counts = {key: len(load_keras_layers(key).paper_layers) for key in KEYS}
    assert counts == {"vggface": 37, "vggface_fc7": 35, "openface": 165, "resnet50": 174, "mobilenet_v1": 85}
    assert load_keras_layers("vggface").layers[-1].keras_class == "Flatten"
    assert load_keras_layers("openface").layers[-1].name == "norm_layer"  # the L2 normalisation
    assert keras_layer_list("vggface", "fc7").key == "vggface_fc7" and keras_layer_list("small_cnn") is None


def test_keras_last_k_refuses_a_backbone_without_a_list():
    model = create_backbone("small_cnn", 7)
    with pytest.raises(ValueError, match="keras_last_k.*recorded: mobilenet_v1, openface, resnet50, vggface"):
        apply_freeze(model, FreezePlan("keras_last_k"), 1)


# --- descriptors ---------------------------------------------------------------------------------


def test_vggface_fc8_descriptor_is_deepfaces_2022_output(models):
    """fc8 flattened, 2,622-d: deepface's base model before its softmax (same weights)."""
    model = models["vggface"].eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = model.descriptor_features(x)
        assert features.shape == (2, 2622) and model.get_classifier().in_features == 2622
        assert torch.allclose(torch.softmax(features, dim=1), model.trunk(x), atol=1e-6)
        assert model(x).shape == (2, 7)


def test_vggface_fc8_needs_fc8_weights(tmp_path, monkeypatch, models):
    import ferbench.backbones.face_backbones as face

    path = tmp_path / "vgg_face_weights.pth"
    path.touch()
    reference = models["vggface"].trunk.state_dict()
    monkeypatch.setattr(face, "load_state_dict_file", lambda _: dict(reference))
    loaded = create_backbone("vggface", 7, weights_file=path, options=PAPER)
    assert all(torch.equal(loaded.trunk.state_dict()[k], v) for k, v in reference.items())
    monkeypatch.setattr(face, "load_state_dict_file", lambda _: {k: v for k, v in reference.items() if not k.startswith("fc8.")})
    with pytest.raises(ValueError, match="vgg_face_weights.pth: has no fc8 weights.*vggface_descriptor=fc7"):
        create_backbone("vggface", 7, weights_file=path, options=PAPER)


def test_openface_without_l2_norm_ends_at_dense_128(models):
    model = models["openface"].eval()
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        dense = model.embedding(x)
        normalised = model.trunk(x)
    assert dense.shape == (3, 128) and not torch.allclose(dense.norm(dim=1), torch.ones(3))
    assert torch.allclose(nn.functional.normalize(dense, dim=1), normalised, atol=1e-6)
    assert torch.allclose(normalised.norm(dim=1), torch.ones(3), atol=1e-5)


# --- ResNet-50 and MobileNet without their last ReLU -----------------------------------------------

FINAL_RELU = {"resnet50": "layer4.2.act3", "mobilenet_v1": "blocks.4.1.bn2.act"}  # Keras: conv5_block3_out, conv_pw_13_relu
DROP = BackboneOptions(resnet_mobilenet_final_relu="drop")


@pytest.mark.parametrize("name", FINAL_RELU)
def test_drop_ends_the_trunk_at_the_tensor_its_last_relu_receives(name):
    """drop: the features (and what the head pools) are the pre-activation maps, negatives included;
    keep: timm's, that activation applied. Keras' init, as BatchNorm γ=1 keeps the last residual branch non-zero."""
    torch.manual_seed(0)
    keep = create_backbone(name, 7, random_init="keras").eval()
    drop = create_backbone(name, 7, options=DROP).eval()
    assert list(drop.state_dict()) == list(keep.state_dict())  # parameter-free: nothing to load differs
    drop.load_state_dict(keep.state_dict())
    relu = keep.get_submodule(FINAL_RELU[name])
    assert isinstance(relu, (nn.ReLU, nn.ReLU6)) and isinstance(drop.get_submodule(FINAL_RELU[name]), nn.Identity)
    seen = {}
    relu.register_forward_pre_hook(lambda module, args: seen.update(pre=args[0].clone()))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        kept, dropped = keep.forward_features(x), drop.forward_features(x)
        assert torch.equal(drop(x), drop.forward_head(dropped))
    assert (dropped < 0).any() and torch.equal(dropped, seen["pre"])
    assert torch.equal(kept, seen["pre"].clamp(0, 6 if isinstance(relu, nn.ReLU6) else None))


@pytest.mark.parametrize("name", FINAL_RELU)
def test_drop_loads_the_same_pretrained_weights(name, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = create_backbone(name, 7)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)  # another seed: loaded tensors cannot match by coincidence
    loaded = create_backbone(name, 7, weights_file=path, options=DROP).state_dict()
    assert list(loaded) == list(source.state_dict())
    head = {k for k in loaded if k.startswith(("fc.", "classifier."))}
    assert len(head) == 2 and all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.items() if k not in head)
    assert isinstance(create_backbone(name, 7, weights_file=path, options=DROP).get_submodule(FINAL_RELU[name]), nn.Identity)


def test_drop_leaves_other_backbones_as_they_are():
    """Only the paper's two timm entries: timm:<name> (the same architecture too) keeps its activation."""
    assert isinstance(create_backbone("timm:resnet50", 7, options=DROP).layer4[2].act3, nn.ReLU)
    torch.manual_seed(0)
    default = create_backbone("small_cnn", 7).state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(v, default[k]) for k, v in create_backbone("small_cnn", 7, options=DROP).state_dict().items())


def _paper_trial(backbone: str):
    """A random-init ``smelyakov2022`` trial of ``backbone`` on 10 blank images, built as a Tune trial builds it."""
    import numpy as np

    from ferbench.harness.train.trial import StudyPayload, _build_trial

    spec = load_spec("smelyakov2022", [f"grid.backbone=[{backbone}]", "resources.gpu=0", "resources.cpu=1"])
    payload = StudyPayload(spec=spec.model_dump(mode="json"), images=np.zeros((10, 24, 24), np.uint8),
                           labels=np.arange(10) % 7, class_names=tuple("abcdefg"),
                           splits={0: {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 10)}},
                           weight_files={})
    arm = {"arm_id": "a", "backbone": backbone, "init": "random", "variant": "baseline", "seed": 0}
    return _build_trial({"arm": arm}, payload)


def test_a_paper_trial_builds_mobilenet_without_its_last_relu():
    trial = _paper_trial("mobilenet_v1")
    assert isinstance(trial.model.blocks[4][1].bn2.act, nn.Identity)
    assert isinstance(trial.model.blocks[4][1].bn1.act, nn.ReLU6)  # only the last one


# --- the CLI and the spec ------------------------------------------------------------------------


def test_backbones_layers_prints_the_list_with_what_trains(capsys):
    assert main(["backbones", "--layers", "resnet50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {line.split()[1]: line.split() for line in lines[2:-1]}
    assert row["conv5_block3_3_conv"][2:] == ["Conv2D", "1,050,624", "yes", "layer4.2.conv3"]
    assert row["conv5_block3_2_conv"][4] == "-" and row["conv5_block3_out"][4] == "excluded"
    assert "174 layers after excluding the last one; the last 4 train: 1,054,720" in lines[-1]
    assert main(["backbones", "--layers", "vggface", "--vggface-descriptor", "fc7", "--k", "2"]) == 0
    assert "the last 2 train: 16,781,312" in capsys.readouterr().out.splitlines()[-1]  # dropout, fc7
    assert main(["backbones", "--layers", "small_cnn"]) == 2
    assert "small_cnn: no recorded Keras layer list" in capsys.readouterr().err


def test_paper_study_spec_is_the_papers_protocol():
    spec = load_spec("smelyakov2022")
    train = spec.train
    assert (train.freeze.policy, train.freeze.k, train.random_init) == ("keras_last_k", 4, "keras")
    assert spec.model.backbone_options() == PAPER
    assert (train.epochs, train.lr, train.optimizer, train.batch_size, train.augment.enabled) == (20, 1e-4, "adam", 32, False)
    assert (spec.split.ratios, spec.split.seed) == ((0.7, 0.1, 0.2), 42)
    assert spec.grid.backbone == ["vggface", "openface", "resnet50", "mobilenet_v1"]
    defaults = load_spec("quick")  # other studies keep today's behaviour
    assert (defaults.model.backbone_options(), defaults.train.random_init) == (BackboneOptions(), "torch")
    assert BackboneOptions().resnet_mobilenet_final_relu == "keep"


@pytest.mark.parametrize("overrides, message", [
    (["train.freeze.policy=keras_last_k", "grid.backbone=[resnet50,timm:resnet18]"],
     "train.freeze.policy: keras_last_k needs a recorded Keras layer list, and there is none for timm:resnet18; "
     "recorded: mobilenet_v1, openface, resnet50, vggface (use last_k for the others)"),
    (["train.freeze.policy=keras_last_k", "grid.backbone=[resnet50]", "train.head=arsirii_au"],
     "train.freeze.policy: keras_last_k counts the layers of the Keras models under the linear head; "
     "train.head=arsirii_au cuts them; use last_k or train.head=linear"),
    (["model.vggface_descriptor=fc9"], "model.vggface_descriptor: Input should be 'fc7' or 'fc8' (got 'fc9')"),
    (["train.random_init=glorot"], "train.random_init: Input should be 'torch' or 'keras' (got 'glorot')"),
    (["model.resnet_mobilenet_final_relu=false"],
     "model.resnet_mobilenet_final_relu: Input should be 'keep' or 'drop' (got False)"),
    (["grid.backbone=[vggface]", "grid.init=[pretrained]", "model.vggface_descriptor=fc8", "weights.source=synth-identity"],
     "model.vggface_descriptor: fc8 keeps the 2,622-identity layer, which synth-identity weights do not train; "
     "use published weights (weights.sources.vggface=published) or model.vggface_descriptor=fc7"),
])
def test_spec_refuses_bad_keras_settings_in_one_line(overrides, message):
    with pytest.raises(SpecError) as caught:
        load_spec("quick", overrides)
    assert str(caught.value) == message


def test_print_spec_shows_the_papers_protocol(capsys):
    assert main(["run", "smelyakov2022", "--print-spec"]) == 0
    out = "".join(line for line in capsys.readouterr().out.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    for line in ("  freeze:\n    policy: keras_last_k\n    k: 4", "  random_init: keras", "model:\n  vggface_descriptor: fc8\n  openface_l2_norm: false\n  resnet_mobilenet_final_relu: drop",
                 "  augment:\n    enabled: false", "  batch_size: 32", "  lr: 0.0001", "  epochs: 20",
                 "  precision: fp32"):
        assert line in out, line


def test_a_paper_trial_builds_its_model_with_the_papers_options():
    """The spec's model options, random_init and keras_last_k reach the trial's model."""
    trial = _paper_trial("openface")
    assert trial.model.l2_norm is False and torch.all(trial.model.trunk.conv1.conv.bias == 0)  # Keras' zero biases
    row = trial.run_epoch(0, 0, 0, trial.split["train"], trial.labels)
    assert row["params_trainable"] == 94_336 + 128 * 7 + 7  # Dense(128) and the head


def test_report_names_the_freezing_policy_and_the_papers_options():
    from ferbench.reports.markdown import _freezing, _model_options

    spec = load_spec("smelyakov2022")
    assert _freezing(spec.train.freeze) == "keras_last_k (the last 4 Keras layers after excluding the last one)"
    assert _model_options(spec.model) == \
        ", VGG-Face descriptor fc8, OpenFace without L2 normalisation, ResNet-50 and MobileNet without their last ReLU"
    assert _model_options(load_spec("quick").model) == ""
