"""Offline resolution of pretrained weights, done on the driver before any trial starts.

A study must know at second one whether every pretrained arm can load its weights: this
module looks in the places a researcher keeps them (an explicit file, a weights folder,
the Hugging Face cache that timm fills) and, when nothing is found, says exactly which
file to put where. It never touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ferbench.backbones.cache_dirs import weights_dir
from ferbench.backbones.registry import get_backbone_info

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class WeightStatus:
    backbone: str
    available: bool
    path: str | None
    source: str  # where it was found, or "missing"
    message: str  # what to do when missing


def default_weights_dir() -> Path:
    return weights_dir()


def weight_file_stem(backbone: str) -> str:
    return backbone.replace(":", "-").replace("/", "-")


def deepface_weights_dir() -> Path:
    """Where deepface keeps its downloads: ``$DEEPFACE_HOME/.deepface/weights`` (home by default)."""
    return Path(os.environ.get("DEEPFACE_HOME", Path.home())) / ".deepface" / "weights"


def _find_in_dir(folder: Path, backbone: str, published_name: str | None) -> Path | None:
    names = [f"{weight_file_stem(backbone)}{suffix}" for suffix in WEIGHT_SUFFIXES]
    for name in names + ([published_name] if published_name else []):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_in_hub_cache(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def resolve_pretrained(
    backbone: str, files: dict[str, str] | None = None, weights_dir: str | Path | None = None
) -> WeightStatus:
    """Find ``backbone``'s pretrained weights offline, in order: explicit file, folders, hub cache."""
    info = get_backbone_info(backbone)
    explicit = (files or {}).get(backbone)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if path.is_file():
            return WeightStatus(backbone, True, str(path), "weights.files", "")
        return WeightStatus(
            backbone, False, None, "missing",
            f"{backbone}: weights.files.{backbone} points to {path}, which does not exist; fix the path",
        )
    folders = [Path(weights_dir).expanduser()] if weights_dir else []
    folders.append(default_weights_dir())
    if info.family == "face":
        folders.append(deepface_weights_dir())
    for folder in folders:
        found = _find_in_dir(folder, backbone, info.weight_filename)
        if found:
            return WeightStatus(backbone, True, str(found.resolve()), str(folder), "")
    hub_ids = [s.removeprefix("hf-hub:") for s in info.pretrained_sources if s.startswith("hf-hub:")]
    for repo_id in hub_ids:
        found = _find_in_hub_cache(repo_id)
        if found:
            return WeightStatus(backbone, True, str(found), f"hf-cache:{repo_id}", "")
    target = folders[0] / (info.weight_filename or f"{weight_file_stem(backbone)}.safetensors")
    if info.pretrained_sources:
        fetch = f"ferbench weights fetch {backbone}" + (f" --dir {folders[0]}" if weights_dir else "")
        how = f"run `{fetch}` (offline: run it on a machine with internet, then copy the file to {target})"
    else:
        how = f"{backbone} has no published pretrained weights; place a state_dict file at {target}"
    return WeightStatus(
        backbone, False, None, "missing",
        f"{backbone}: pretrained weights not found offline; {how}, or set weights.files.{backbone}=PATH",
    )
