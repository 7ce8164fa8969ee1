"""Pretrained weights reach trials on machines that lack the driver's files (cluster workers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ferbench.backbones import create_backbone
from ferbench.harness.train.trial import StudyPayload, _build_trial, _weights_here


def _payload(weight_file: str, blobs: dict[str, bytes]) -> StudyPayload:
    from ferbench.harness.spec import load_spec

    spec = load_spec("quick", ["data.num_images=240", "data.image_size=24", "grid.backbone=[small_cnn]"])
    return StudyPayload(spec=spec.model_dump(mode="json"), images=np.zeros((10, 24, 24), np.uint8),
                        labels=np.zeros(10, np.int64), class_names=tuple("abcdefg"),
                        splits={0: {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 10)}},
                        weight_files={"small_cnn": weight_file}, weight_blobs=blobs)


def test_present_file_is_used_as_it_is(tmp_path):
    path = tmp_path / "small_cnn.pth"
    path.write_bytes(b"x")
    assert _weights_here(_payload(str(path), {"small_cnn": b"other"}), "small_cnn") == str(path)


def test_a_node_without_the_file_builds_the_model_from_the_payloads_copy(tmp_path):
    torch.manual_seed(7)
    source = tmp_path / "small_cnn.pth"
    torch.save(create_backbone("small_cnn", 7).state_dict(), source)
    expected = torch.load(source, weights_only=True)
    payload = _payload("/nowhere/on/this/node/small_cnn.pth", {"small_cnn": source.read_bytes()})
    trial = _build_trial({"arm": {"arm_id": "a", "backbone": "small_cnn", "init": "pretrained", "variant": "baseline",
                                  "seed": 0}}, payload)
    state = trial.model.state_dict()
    trunk = [k for k in expected if "classifier" not in k and "head" not in k and k in state]
    assert trunk and all(torch.equal(state[k], expected[k]) for k in trunk)
    leftover = Path(tempfile.gettempdir()) / "ferbench-weights" / f"{os.getpid()}-small_cnn.pth"
    assert not leftover.exists()  # the copy is removed once loaded
