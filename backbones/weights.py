"""Offline resolution of pretrained weights, done on the driver before any trial starts.

A study must know at second one whether every pretrained arm can load its weights: this
module looks in the places a researcher keeps them (an explicit file, a weights folder,
the Hugging Face cache that timm fills) and, when nothing is found, says exactly which
file to put where. A file found in a folder is checked against its recorded SHA-256
(``ferbench.backbones.integrity``); an explicit ``weights.files`` entry is the user's own and
is not. It never touches the network (a ``timm:hf-hub:`` backbone's config aside, see
``ferbench.backbones.hf_hub``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ferbench.cache_dirs import weights_dir
from ferbench.backbones.hf_hub import HUB_FILENAMES, HubUnavailable, copy_instructions, hub_repo_id
from ferbench.backbones.integrity import WeightHashMismatch, check_weight_file
from ferbench.backbones.registry import get_backbone_info

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
__all__ = ["HUB_FILENAMES", "WeightStatus", "resolve_pretrained", "weight_file_stem"]


@dataclass(frozen=True)
class WeightStatus:
    backbone: str
    available: bool
    path: str | None
    source: str  # where it was found, "missing", "sha256-mismatch" (changed since it was recorded), or "unusable"
    message: str  # what to do when missing or changed
    ledger_dir: str | None = None  # the folder whose sha256.json records the found file (None: not recorded)


def default_weights_dir() -> Path:
    return weights_dir()


def weight_file_stem(backbone: str) -> str:
    """A file-name-safe form of ``backbone``: ``timm:resnet18`` → ``timm-resnet18``,
    ``timm:hf-hub:org/repo`` → ``timm-hf-hub-org--repo`` ("/" as "--", as the Hub's own cache
    does: repository names never contain "--", so two repositories never share a file name)."""
    return backbone.replace("/", "--").replace(":", "-")


def deepface_weights_dir() -> Path:
    """Where deepface keeps its downloads: ``$DEEPFACE_HOME/.deepface/weights`` (home by default)."""
    return Path(os.environ.get("DEEPFACE_HOME", Path.home())) / ".deepface" / "weights"


def _find_in_dir(folder: Path, backbone: str, published_name: str | None) -> Path | None:
    names = [f"{weight_file_stem(backbone)}{suffix}" for suffix in WEIGHT_SUFFIXES]
    for name in names + ([published_name] if published_name else []):
        if (folder / name).is_file():
            return folder / name
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _find_in_hub_cache(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=_hub_cache())
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _checked(backbone: str, path: Path, source: str, ledger_dir: Path, verify: bool) -> WeightStatus:
    """The status of a found file, refused when its SHA-256 is not the recorded (or published) one."""
    status = WeightStatus(backbone, True, str(path), source, "", str(ledger_dir))
    if not verify:
        return status
    try:
        check_weight_file(path, backbone, ledger_dir)
    except WeightHashMismatch as err:
        return WeightStatus(backbone, False, str(path), "sha256-mismatch", f"{backbone}: {err}", str(ledger_dir))
    return status


def resolve_pretrained(
    backbone: str, files: dict[str, str] | None = None, weights_dir: str | Path | None = None, verify: bool = True
) -> WeightStatus:
    """Find ``backbone``'s pretrained weights offline, in order: explicit file, folders, hub cache.

    A file found in a folder or the hub cache is hashed and checked against the ledger (recorded
    there the first time); ``verify=False`` skips that (``ferbench weights verify`` checks itself).
    """
    try:
        info = get_backbone_info(backbone)
    except HubUnavailable as err:  # a Hub backbone whose config is not here: nothing can load without it
        return WeightStatus(backbone, False, None, "missing", str(err))
    except ValueError as err:  # its config is not a timm model's: no download helps
        if hub_repo_id(backbone) is None:
            raise
        return WeightStatus(backbone, False, None, "unusable", f"{backbone}: {err}")
    explicit = (files or {}).get(backbone)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if path.is_file():
            return WeightStatus(backbone, True, str(path), "weights.files", "")
        return WeightStatus(
            backbone, False, None, "missing",
            f"{backbone}: weights.files.{backbone} points to {path}, which does not exist; fix the path (a weight file, "
            "or EXPERIMENT_DIR/ARM_ID: an arm of a finished experiment)",
        )
    folders = [Path(weights_dir).expanduser()] if weights_dir else []
    folders.append(default_weights_dir())
    ledger_dirs = list(folders)  # FERBench's weights folders keep their own ledgers
    if info.family == "face":
        folders.append(deepface_weights_dir())
    for folder in folders:
        found = _find_in_dir(folder, backbone, info.weight_filename)
        if found:
            ledger_dir = folder if folder in ledger_dirs else default_weights_dir()
            return _checked(backbone, found.resolve(), str(folder), ledger_dir, verify)
    hub_ids = [s.removeprefix("hf-hub:") for s in info.pretrained_sources if s.startswith("hf-hub:")]
    for repo_id in hub_ids:
        found = _find_in_hub_cache(repo_id)
        if found:  # the snapshot path, not the blob it links to: the blob's name is the Hub's hash
            return _checked(backbone, found, f"hf-cache:{repo_id}", default_weights_dir(), verify)
    target = folders[0] / (info.weight_filename or f"{weight_file_stem(backbone)}.safetensors")
    repo_id = hub_repo_id(backbone)
    if repo_id:
        fetch = f"ferbench weights fetch {backbone}"
        how = f"run `{fetch}` (offline: {copy_instructions(backbone, repo_id)}; or place the weights at {target})"
    elif info.pretrained_sources:
        fetch = f"ferbench weights fetch {backbone}" + (f" --dir {folders[0]}" if weights_dir else "")
        how = f"run `{fetch}` (offline: run it on a machine with internet, then copy the file to {target})"
    else:
        how = f"{backbone} has no published pretrained weights; place a state_dict file at {target}"
    return WeightStatus(
        backbone, False, None, "missing",
        f"{backbone}: pretrained weights not found offline; {how}, or set weights.files.{backbone}=PATH",
    )
