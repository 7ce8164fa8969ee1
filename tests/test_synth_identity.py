"""synth-identity: offline identity pretraining, cached per backbone and input size."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ferbench.backbones import create_backbone
from ferbench.harness.train.synth_identity import synth_identity_weights

RECIPE = {"num_images": 240, "num_identities": 8, "image_size": 24, "epochs": 1, "lr": 1e-3, "batch_size": 32, "seed": 5}


def test_pretrains_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path))
    lines: list[str] = []
    first = synth_identity_weights("small_cnn", 24, RECIPE, log=lines.append)
    assert first.is_file() and first.parent == tmp_path / "synth-identity"
    assert any("identity accuracy" in line for line in lines)
    stamp = first.stat().st_mtime_ns
    lines.clear()
    assert synth_identity_weights("small_cnn", 24, RECIPE, log=lines.append) == first
    assert lines == [] and first.stat().st_mtime_ns == stamp  # no second training
    other = synth_identity_weights("small_cnn", 32, RECIPE, log=lines.append)
    assert other != first  # another input size is another pretraining
    assert synth_identity_weights("small_cnn", 24, {**RECIPE, "epochs": 2}, log=lines.append) not in (first, other)


def test_pretrained_trunk_loads_and_classifier_is_new(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path))
    path = synth_identity_weights("small_cnn", 24, RECIPE, log=lambda _: None)
    saved = load_file(str(path))
    assert saved["classifier.weight"].shape[0] == RECIPE["num_identities"]
    model = create_backbone("small_cnn", 7, weights_file=path)
    state = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert state["classifier.weight"].shape[0] == 7
