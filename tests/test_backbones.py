"""Backbone registry, builders, loading pretrained weights from files, and offline weight resolution."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from ferbench.backbones import (
    BackboneOptions,
    backbone_parameter_counts,
    count_parameters,
    create_backbone,
    get_backbone_info,
    is_known_backbone,
    list_backbones,
    meta_backbone,
    resolve_pretrained,
)
from ferbench.backbones.small_cnn import SmallCNN
from ferbench.harness.cli.main import main

BUILT_IN = ("small_cnn", "mobilenet_v1", "resnet50")
MOBILENET_HUB_ID = "timm/mobilenetv1_100.ra4_e3600_r224_in1k"


def save_state_dict(model: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_registry_lists_built_in_backbones():
    names = list_backbones()
    assert set(BUILT_IN) <= set(names)
    assert names == sorted(names)
    for name in BUILT_IN:
        assert is_known_backbone(name)
    assert is_known_backbone("timm:resnet18")
    assert is_known_backbone("timm:resnet18.a1_in1k")
    assert not is_known_backbone("timm:no_such_model_xyz")
    assert not is_known_backbone("resnet18")  # timm models need the prefix
    assert not is_known_backbone("")


@pytest.mark.parametrize("name", [*BUILT_IN, "timm:resnet18"])
def test_backbone_outputs_seven_logits_at_48px(name):
    info = get_backbone_info(name)
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(3, info.in_chans, 48, 48))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_backbone_info():
    small = get_backbone_info("small_cnn")
    assert (small.input_size, small.in_chans, small.channel_order) == (48, 1, "GRAY")
    mobilenet = get_backbone_info("mobilenet_v1")
    assert (mobilenet.input_size, mobilenet.in_chans, mobilenet.channel_order) == (224, 3, "RGB")
    assert mobilenet.timm_name == "mobilenetv1_100.ra4_e3600_r224_in1k"
    assert mobilenet.pretrained_sources == (f"hf-hub:{MOBILENET_HUB_ID}",)
    assert get_backbone_info("resnet50").timm_name == "resnet50.a1_in1k"
    resnet18 = get_backbone_info("timm:resnet18")
    assert resnet18.name == "timm:resnet18" and resnet18.family == "timm"
    assert resnet18.timm_name.startswith("resnet18.")


def test_built_in_timm_entries_register_without_timm_and_match_its_configs():
    """The built-in timm entries carry timm's pretrained configs as recorded, so that importing the
    backbones (every trial worker, every CLI call) does not import timm; those records are timm's own."""
    import subprocess
    import sys

    from ferbench.backbones.timm_backbones import BUILTIN_PRETRAINED_CFGS, CFG_FIELDS, timm_pretrained_cfg

    code = "import sys, backbones; backbones.get_backbone_info('resnet50'); print('timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    for timm_name, recorded in BUILTIN_PRETRAINED_CFGS.items():
        live = timm_pretrained_cfg(timm_name)
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in live.items() if k in CFG_FIELDS} == recorded, timm_name


def test_unknown_backbone_raises_key_error_listing_allowed_names():
    for name in ("resnet_50", "timm:no_such_model_xyz"):
        with pytest.raises(KeyError) as excinfo:
            create_backbone(name, num_classes=7)
        message = str(excinfo.value)
        assert repr(name) in message
        for allowed in BUILT_IN:
            assert allowed in message
        assert "timm:" in message
    with pytest.raises(KeyError):
        get_backbone_info("resnet_50")


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v1", "resnet50", "openface", "vggface"])
def test_random_init_follows_torch_seed(name):
    states = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        states.append(create_backbone(name, 7).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def _largest_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return max((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), key=lambda m: m.weight.numel())


def _conv_fan(conv: torch.nn.Conv2d, mode: str) -> int:
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    return kernel * (conv.out_channels // conv.groups if mode == "fan_out" else conv.in_channels // conv.groups)


def test_random_init_uses_each_librarys_own_initialiser():
    """What ``random_init`` in ``ferbench backbones --json`` says is what the weights look like."""
    torch.manual_seed(0)
    resnet = create_backbone("resnet50", 7)
    bottlenecks = [m for m in resnet.modules() if type(m).__name__ == "Bottleneck"]
    assert len(bottlenecks) == 16 and all(torch.all(block.bn3.weight == 0) for block in bottlenecks)
    conv = _largest_conv(resnet)  # Kaiming-normal, fan_out
    assert conv.weight.std().item() == pytest.approx((2 / _conv_fan(conv, "fan_out")) ** 0.5, rel=0.05)

    mobilenet = create_backbone("mobilenet_v1", 7)
    conv = _largest_conv(mobilenet)  # TensorFlow's normal(0, sqrt(2 / fan_out))
    assert conv.weight.std().item() == pytest.approx((2 / _conv_fan(conv, "fan_out")) ** 0.5, rel=0.05)
    bound = 1 / 7 ** 0.5 * (1 + 1e-6)
    assert 0.9 * bound < mobilenet.get_classifier().weight.abs().max().item() <= bound

    for name in ("small_cnn", "openface", "vggface"):  # PyTorch's defaults: uniform within 1/sqrt(fan_in)
        conv = _largest_conv(create_backbone(name, 7))
        bound = 1 / _conv_fan(conv, "fan_in") ** 0.5 * (1 + 1e-6)  # float32 rounding
        assert 0.99 * bound < conv.weight.abs().max().item() <= bound, name


@pytest.mark.parametrize("name, options", [
    ("small_cnn", {}), ("mobilenet_v1", {}), ("resnet50", {}), ("openface", {"openface_l2_norm": False}),
    ("vggface", {}), ("vggface", {"vggface_descriptor": "fc8"}),
])
def test_counting_on_the_meta_device_equals_a_real_build(name, options):
    """``ferbench backbones`` counts networks built on the meta device (no storage, no initialisation): the
    same parameters and buffers, by name and shape, as a real build, so the same counts."""
    opts = BackboneOptions(**options)
    meta = meta_backbone(name, 7, options=opts)
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    real = create_backbone(name, 7, options=opts)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert count_parameters(meta) == count_parameters(real)
    assert backbone_parameter_counts(name, options=opts) == backbone_parameter_counts(name, real)  # meta by default
    del real


def test_meta_counts_are_the_papers_keras_counts():
    """DESIGN.md's Keras counts, from meta builds (VGG-Face with fc8 is deepface's 2022 model, 145,002,878)."""
    assert backbone_parameter_counts("vggface", options=BackboneOptions(vggface_descriptor="fc8"))["keras_params"] == 145_002_878
    assert backbone_parameter_counts("vggface")["keras_params"] == 134_260_544
    assert backbone_parameter_counts("openface")["keras_params"] == 3_743_280
    assert backbone_parameter_counts("mobilenet_v1")["keras_params"] == 3_228_864
    assert backbone_parameter_counts("resnet50")["keras_params"] == 23_587_712


def test_parameter_counts_match_the_papers_keras_arithmetic():
    # DESIGN.md: timm mobilenetv1_100 without head has 3,206,976 params, resnet50 23,508,032;
    # a 7-class linear head adds features*7 + 7.
    assert count_parameters(create_backbone("mobilenet_v1", 7))["params_total"] == 3_206_976 + 1024 * 7 + 7
    assert count_parameters(create_backbone("resnet50", 7))["params_total"] == 23_508_032 + 2048 * 7 + 7


# --- loading pretrained weights from files ----------------------------------------------------


def test_mobilenet_loads_feature_weights_from_safetensors(tmp_path):
    torch.manual_seed(123)
    source = timm.create_model("mobilenetv1_100", num_classes=1000)
    with torch.no_grad():  # make BN running statistics non-default so that buffers are checked too
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path / "mobilenet_v1.safetensors"
    save_state_dict(source, path)

    torch.manual_seed(999)  # a different seed: loaded tensors cannot match by coincidence
    model = create_backbone("mobilenet_v1", 7, weights_file=path)
    expected, loaded = source.state_dict(), model.state_dict()
    assert set(loaded) == set(expected)
    features = [k for k in expected if not k.startswith("classifier.")]
    assert "conv_stem.weight" in features and len(features) > 100
    for key in features:
        assert torch.equal(loaded[key], expected[key]), key
    assert loaded["classifier.weight"].shape == (7, 1024)
    assert loaded["classifier.bias"].shape == (7,)
    # Without the file the same architecture is initialised differently.
    fresh = create_backbone("mobilenet_v1", 7).state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], expected["conv_stem.weight"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_small_cnn_loads_features_from_its_own_state_dict(tmp_path, suffix):
    torch.manual_seed(1)
    source = SmallCNN(num_classes=3)  # a different number of classes: the classifier is not loaded
    path = tmp_path / f"small_cnn{suffix}"
    if suffix == ".safetensors":
        save_state_dict(source, path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    torch.manual_seed(2)
    model = create_backbone("small_cnn", 7, weights_file=path)
    expected, loaded = source.state_dict(), model.state_dict()
    for key in expected:
        if key.startswith("classifier."):
            continue
        assert torch.equal(loaded[key], expected[key]), key
    assert model.classifier.out_features == 7


def test_small_cnn_rejects_another_networks_weights(tmp_path):
    path = tmp_path / "mobilenet.safetensors"
    save_state_dict(timm.create_model("mobilenetv1_100", num_classes=7), path)
    with pytest.raises(ValueError) as excinfo:
        create_backbone("small_cnn", 7, weights_file=path)
    assert str(path) in str(excinfo.value) and "small_cnn" in str(excinfo.value)


def test_small_cnn_rejects_a_file_with_only_a_classifier(tmp_path):
    path = tmp_path / "head_only.safetensors"
    save_file({"classifier.weight": torch.zeros(7, 160), "classifier.bias": torch.zeros(7)}, str(path))
    with pytest.raises(ValueError):
        create_backbone("small_cnn", 7, weights_file=path)


def test_small_cnn_rejects_other_widths_with_value_error(tmp_path):
    path = tmp_path / "narrow.safetensors"
    save_state_dict(SmallCNN(7, widths=(16, 32, 64)), path)
    with pytest.raises(ValueError):
        create_backbone("small_cnn", 7, weights_file=path)


# --- offline resolution of pretrained weights ---------------------------------------------------


def test_missing_weights_message_names_target_and_fetch_command(isolated_weights):
    weights_dir, _ = isolated_weights
    status = resolve_pretrained("mobilenet_v1")
    assert not status.available and status.path is None and status.source == "missing"
    assert str(weights_dir / "mobilenet_v1.safetensors") in status.message
    assert "`ferbench weights fetch mobilenet_v1`" in status.message
    assert "weights.files.mobilenet_v1" in status.message


def test_missing_weights_message_prefers_the_spec_weights_dir(isolated_weights, tmp_path):
    spec_dir = tmp_path / "spec_weights"
    status = resolve_pretrained("resnet50", weights_dir=spec_dir)
    assert not status.available
    assert str(spec_dir / "resnet50.safetensors") in status.message
    assert f"`ferbench weights fetch resnet50 --dir {spec_dir}`" in status.message


def test_backbone_without_published_weights_says_so(isolated_weights):
    weights_dir, _ = isolated_weights
    status = resolve_pretrained("small_cnn")
    assert not status.available
    assert "no published pretrained weights" in status.message
    assert str(weights_dir / "small_cnn.safetensors") in status.message


def test_weights_found_in_ferbench_weights_dir(isolated_weights):
    weights_dir, _ = isolated_weights
    path = weights_dir / "mobilenet_v1.safetensors"
    path.write_bytes(b"placeholder")  # resolution checks presence; loading happens in the trial
    status = resolve_pretrained("mobilenet_v1")
    assert status.available
    assert status.path == str(path.resolve())
    assert status.source == str(weights_dir)


def test_weights_dir_argument_is_searched_before_the_default(isolated_weights, tmp_path):
    default_dir, _ = isolated_weights
    (default_dir / "small_cnn.pth").write_bytes(b"default")
    spec_dir = tmp_path / "spec_weights"
    spec_dir.mkdir()
    (spec_dir / "small_cnn.pth").write_bytes(b"spec")
    status = resolve_pretrained("small_cnn", weights_dir=spec_dir)
    assert status.path == str((spec_dir / "small_cnn.pth").resolve())
    # The default folder is still searched when the spec folder has no file.
    status = resolve_pretrained("small_cnn", weights_dir=tmp_path / "empty")
    assert status.path == str((default_dir / "small_cnn.pth").resolve())


def test_explicit_file_wins_and_missing_explicit_file_is_named(isolated_weights, tmp_path):
    weights_dir, _ = isolated_weights
    (weights_dir / "mobilenet_v1.safetensors").write_bytes(b"folder copy")
    explicit = tmp_path / "mine" / "mnv1.pth"
    explicit.parent.mkdir()
    explicit.write_bytes(b"explicit copy")
    status = resolve_pretrained("mobilenet_v1", files={"mobilenet_v1": str(explicit)})
    assert status.available and status.path == str(explicit.resolve()) and status.source == "weights.files"

    missing = tmp_path / "mine" / "typo.pth"
    status = resolve_pretrained("mobilenet_v1", files={"mobilenet_v1": str(missing)})
    assert not status.available  # no silent fallback to the folder copy
    assert str(missing) in status.message and "weights.files.mobilenet_v1" in status.message
    # An explicit file for another backbone does not affect this one.
    assert resolve_pretrained("mobilenet_v1", files={"resnet50": str(missing)}).available


def test_weights_found_in_hugging_face_cache(isolated_weights):
    _, hub_cache = isolated_weights
    snapshot = _hub_snapshot(hub_cache, MOBILENET_HUB_ID)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    status = resolve_pretrained("mobilenet_v1")
    assert status.available
    assert status.path == str(snapshot / "model.safetensors")
    assert status.source == f"hf-cache:{MOBILENET_HUB_ID}"
    # Another backbone's repo is not confused with it.
    assert not resolve_pretrained("resnet50").available


def _hub_snapshot(hub_cache, repo_id: str):
    """A Hugging Face cache entry laid out as ``huggingface_hub`` writes it; returns the snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_every_resolver_path_gives_bit_identical_outputs(isolated_weights, tmp_path):
    weights_dir, hub_cache = isolated_weights
    torch.manual_seed(3)
    source = timm.create_model("mobilenetv1_100", pretrained=False)
    spec_dir = tmp_path / "spec_weights"
    places = {
        "weights.files": tmp_path / "mine" / "any-name.safetensors",
        str(spec_dir): spec_dir / "mobilenet_v1.safetensors",
        str(weights_dir): weights_dir / "mobilenet_v1.safetensors",
        f"hf-cache:{MOBILENET_HUB_ID}": _hub_snapshot(hub_cache, MOBILENET_HUB_ID) / "model.safetensors",
    }
    images = torch.rand(2, 3, 64, 64)
    outputs = {}
    for expected_source, path in places.items():  # each step in turn; earlier steps' files are removed
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state_dict(source, path)
        files = {"mobilenet_v1": str(places["weights.files"])} if expected_source == "weights.files" else None
        status = resolve_pretrained("mobilenet_v1", files=files, weights_dir=spec_dir if expected_source != str(weights_dir) else None)
        assert status.source == expected_source and status.path == str(path.resolve())
        model = create_backbone("mobilenet_v1", 7, weights_file=status.path).eval()
        with torch.no_grad():
            outputs[expected_source] = model.forward_features(images)
        if expected_source != "weights.files":
            path.unlink()
    with torch.no_grad():
        reference = source.eval().forward_features(images)
    for where, output in outputs.items():
        assert torch.equal(output, reference), where


# --- ferbench backbones --json ---------------------------------------------------------------


def test_backbones_cli_json(capsys):
    assert main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert set(BUILT_IN) <= set(by_name)
    for name in BUILT_IN:
        row = by_name[name]
        assert {"name", "family", "input_size", "params", "keras_params"} <= set(row)
        info = get_backbone_info(name)
        assert row["family"] == info.family and row["input_size"] == info.input_size
        model = create_backbone(name, num_classes=7)
        head = sum(p.numel() for p in model.get_classifier().parameters())
        assert row["params"] == sum(p.numel() for p in model.parameters()) - head  # without the classifier
    assert by_name["small_cnn"]["input_size"] == 48
    assert by_name["resnet50"]["params"] > by_name["mobilenet_v1"]["params"] > by_name["small_cnn"]["params"]
    # The Smelyakov reading: Keras layers after excluding the last one, and what the last 4 of them train
    # (Keras' count; VGG-Face with the 2022 fc8 descriptor: fc7 and fc8; ResNet-50: conv5_block3_3 conv + BN).
    paper = {name: (by_name[name]["keras_layers"], by_name[name]["paper_trainable_params"],
                    by_name[name]["paper_trainable_params_torch"]) for name in (*BUILT_IN, "vggface", "openface")}
    assert paper == {
        "vggface": (37, 27_523_646, 27_523_646), "openface": (165, 94_336, 94_336),
        "resnet50": (174, 1_054_720, 1_052_672), "mobilenet_v1": (85, 1_052_672, 1_052_672), "small_cnn": (None, None, None),
    }


def test_corrupt_weight_file_is_refused_in_one_line_naming_it(tmp_path):
    from ferbench.backbones.registry import create_backbone as build

    for name, data in (("garbage.pth", bytes(range(256)) * 4), ("cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError) as caught:
            build("small_cnn", 7, weights_file=str(path))
        message = str(caught.value)
        assert message.startswith(f"{path}: not a readable weights file, truncated or corrupt") and "\n" not in message
        assert "weights_only" not in message  # torch's advice to unpickle arbitrary code is not passed on


# --- the kept table of `ferbench backbones` ----------------------------------------------------


def test_shipped_backbones_table_is_current():
    from ferbench.harness.cli import backbones_table

    shipped = json.loads(backbones_table.shipped_path().read_text())
    assert shipped["key"]["source"] == backbones_table.source_digest(), (
        "backbones/backbones_table.json is stale: run python -m ferbench.harness.cli.backbones_table")
    if shipped["key"]["versions"] == backbones_table.table_key()["versions"]:
        from ferbench.harness.cli.backbones_table import compute_table

        assert {k: shipped[k] for k in ("k", "rows")} == json.loads(json.dumps(compute_table()))


def test_backbones_table_is_computed_once_then_read_until_its_key_changes(tmp_path, monkeypatch):
    from ferbench.harness.cli import backbones_table

    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backbones_table, "shipped_path", lambda: tmp_path / "absent.json")
    calls = []

    def compute():
        calls.append(1)
        return {"k": 4, "rows": [{"name": f"row{len(calls)}"}]}

    first = backbones_table.load_table(compute)
    assert calls == [1] and first["rows"] == [{"name": "row1"}]
    assert json.loads((tmp_path / backbones_table.TABLE_FILE).read_text())["key"] == backbones_table.table_key()
    assert backbones_table.load_table(compute)["rows"] == [{"name": "row1"}] and calls == [1]  # read, not computed
    key = backbones_table.table_key()
    monkeypatch.setattr(backbones_table, "table_key", lambda: {**key, "versions": {**key["versions"], "timm": "0.0.1"}})
    assert backbones_table.load_table(compute)["rows"] == [{"name": "row2"}] and calls == [1, 1]  # another timm: recounted
    (tmp_path / backbones_table.TABLE_FILE).write_text("{not json")
    assert backbones_table.load_table(compute)["rows"] == [{"name": "row3"}]  # a damaged copy is recomputed


def test_backbones_source_digest_follows_the_backbone_code(tmp_path, monkeypatch):
    import shutil

    from ferbench.harness.cli import backbones_table

    package = tmp_path / "backbones"
    shutil.copytree(backbones_table._package_dir("ferbench.backbones"), package)
    real_dir = backbones_table._package_dir
    monkeypatch.setattr(backbones_table, "_package_dir",
                        lambda name: package if name == "ferbench.backbones" else real_dir(name))
    before = backbones_table.source_digest()
    (package / backbones_table.TABLE_FILE).write_text("{}")  # the table itself is not part of its key
    assert backbones_table.source_digest() == before
    with open(package / "small_cnn.py", "a") as handle:
        handle.write("\n# changed\n")
    assert backbones_table.source_digest() != before
