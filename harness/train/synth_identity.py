"""``synth-identity``: an offline pretrained source for any backbone.

The Smelyakov hypothesis is that face-recognition pretraining helps FER. With no internet and no
published weights, FERBench can still test it end to end: each backbone is pretrained to
recognise the *identities* of a separate SynthFER set (other images, other people than the
emotion study's), once per backbone and input size, and the weights are cached. Pretrained arms
then start from those weights, exactly as they would from VGG-Face's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ferbench.cache_dirs import cache_dir
from ferbench.harness.study.atomic import atomic_write_bytes

CACHE_VERSION = 1  # bump when the recipe changes, so stale caches are not reused

logger = logging.getLogger(__name__)  # not ``log``: that is synth_identity_weights' parameter


def _notice(line: str) -> None:
    """Pretraining progress: part of a study's own narrative, so the CLI shows it on stdout."""
    logger.info(line, extra={"stream": "stdout"})


def synth_identity_dir() -> Path:
    return cache_dir("synth-identity")


def _cache_file(backbone: str, input_size: int, recipe: dict) -> Path:
    key = json.dumps({"backbone": backbone, "input_size": input_size, "version": CACHE_VERSION, **recipe}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = backbone.replace(":", "-").replace("/", "-")
    return synth_identity_dir() / f"{stem}-{input_size}px-{digest}.safetensors"


def synth_identity_weights(backbone: str, input_size: int, recipe: dict, log: Callable[[str], None] = _notice) -> Path:
    """The cached identity-pretrained weights of ``backbone`` at ``input_size``, trained if missing.

    ``recipe``: num_images, num_identities, image_size, epochs, lr, batch_size, seed. ``log`` receives
    the progress lines (default: INFO notices of this module's logger).
    """
    target = _cache_file(backbone, input_size, recipe)
    if target.is_file():
        return target
    from safetensors.torch import save

    log(f"  synth-identity: pretraining {backbone} at {input_size}px on {recipe['num_identities']} SynthFER identities "
        f"({recipe['epochs']} epochs, cached in {target.parent})")
    start = time.monotonic()
    model, accuracy = _pretrain(backbone, input_size, recipe)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(target, save(state, metadata={"identity_accuracy": f"{accuracy:.4f}", "recipe": json.dumps(recipe)}))
    log(f"  synth-identity: {backbone} done in {time.monotonic() - start:.0f} s, identity accuracy {accuracy:.3f}")
    return target


def _pretrain(backbone: str, input_size: int, recipe: dict) -> tuple[torch.nn.Module, float]:
    from ferbench.backbones import create_backbone, get_backbone_info
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.data.synthfer import generate_synthfer
    from ferbench.harness.tasks.classification import accuracy_and_loss
    from ferbench.harness.train.loop import predict, train_one_epoch

    data = generate_synthfer(
        num_images=recipe["num_images"], image_size=recipe["image_size"], seed=recipe["seed"],
        num_identities=recipe["num_identities"], label_noise=0.0,
    )
    identities = torch.from_numpy(data.subjects)
    images = torch.from_numpy(data.images)
    order = torch.from_numpy(np.random.default_rng(recipe["seed"]).permutation(len(data)))
    held_out = max(1, len(order) // 10)
    train_idx, check_idx = order[held_out:], order[:held_out]

    info = get_backbone_info(backbone)
    adapter = InputAdapter(input_size, info.in_chans, info.channel_order, info.mean, info.std)
    torch.manual_seed(recipe["seed"])
    model = create_backbone(backbone, recipe["num_identities"])
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    augment = {"hflip": True, "rotation_deg": 5.0, "zoom": 0.05, "translate": 0.05, "shear_deg": 0.0}
    device = torch.device("cpu")
    for _ in range(recipe["epochs"]):
        train_one_epoch(model, optimizer, images, identities, train_idx, batch_size=recipe["batch_size"],
                        adapter=adapter, augment=augment, generator=generator, device=device)
    logits = predict(model, images, check_idx, batch_size=256, adapter=adapter, device=device)
    accuracy, _ = accuracy_and_loss(logits, identities[check_idx])
    return model, accuracy
