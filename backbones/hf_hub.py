"""timm models published on the Hugging Face Hub, as ``timm:hf-hub:ORG/REPO`` backbones.

A Hub repository of a timm model holds ``config.json`` (the architecture, its arguments and the
pretrained config: input size, mean, std, classifier) and ``model.safetensors`` (or
``pytorch_model.bin``). Both live where huggingface_hub keeps them, the Hugging Face cache
(``$HF_HOME/hub``), the place timm's own hf-hub loading uses. The config is read from there, and
downloaded on first use when online (it is a few hundred bytes; the weights are fetched only by
``ferbench weights fetch`` or preflight); offline (``FERBENCH_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``)
nothing is tried and the error says what to copy where. The model is then built and loaded as any
``timm:<name>`` backbone, with the Hub's pretrained config instead of timm's built-in one.

Accepting the name needs no network and no timm import (``is_known_backbone`` runs while a spec
is validated); only its use reads the config.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ferbench.backbones.registry import BackboneFamily, BackboneInfo, register_family
from ferbench.backbones.timm_backbones import build_timm, timm_info

HF_HUB_PREFIX = "timm:hf-hub:"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's weight files on the Hub, preferred first
CONFIG_FILENAME = "config.json"
OFFLINE_VARIABLES = ("FERBENCH_OFFLINE", "HF_HUB_OFFLINE")
# Hugging Face repository ids: "org/name", letters, digits, "-", "_", "."; no "--" or ".." (the Hub's rules).
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# Keys of a Hub config's model arguments that FERBench sets itself.
_OWN_ARGUMENTS = ("num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")


class HubUnavailable(FileNotFoundError):
    """A Hub file this machine lacks and may not (offline) or could not download; the message says what
    to do. A FileNotFoundError, as huggingface_hub's own, so callers that report missing files report it."""


def offline_setting() -> str | None:
    """The variable that forbids downloads, as ``NAME=value`` (read at each call: tests and CLIs set it late)."""
    for var in OFFLINE_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value.lower() in ("1", "true", "yes", "on"):
            return f"{var}={value}"
    return None


def offline() -> bool:
    return offline_setting() is not None


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def hub_repo_id(backbone: str) -> str | None:
    """``ORG/REPO`` of a ``timm:hf-hub:ORG/REPO`` backbone name, None for other names."""
    repo_id = backbone[len(HF_HUB_PREFIX):] if backbone.startswith(HF_HUB_PREFIX) else ""
    return repo_id if is_repo_id(repo_id) else None


def hub_cache() -> Path:
    """huggingface_hub's cache folder (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_folder(repo_id: str) -> Path:
    return hub_cache() / f"models--{repo_id.replace('/', '--')}"


def cached_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of the repository's ``main`` revision in the hub cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def cached_weights(repo_id: str) -> Path | None:
    return next((found for name in HUB_FILENAMES if (found := cached_file(repo_id, name)) is not None), None)


def copy_instructions(backbone: str, repo_id: str) -> str:
    """How to bring a Hub backbone's files to this machine by hand."""
    folder = repo_cache_folder(repo_id)
    return (f"run `ferbench weights fetch {backbone}` on a machine with internet (or `hf download {repo_id} "
            f"{CONFIG_FILENAME} {HUB_FILENAMES[0]}`), then copy its Hugging Face cache folder {folder.name} "
            f"to {folder} here")


def hub_download(repo_id: str, filename: str, *, endpoint: str | None = None, timeout_s: float = 20.0) -> Path:
    """Download ``filename`` into the hub cache; returns the snapshot path.

    huggingface_hub retries a failed metadata request for about 20 s; one plain request first makes
    an unreachable Hub fail within ``timeout_s`` (at once when the name does not resolve). A file the
    repository lacks raises huggingface_hub's error (``is_missing_on_hub``); every other failure HubUnavailable.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    if offline():
        raise HubUnavailable(f"{repo_id}/{filename} is not in the Hugging Face cache ({hub_cache()}) and downloads are "
                             f"off ({offline_setting()})")
    url = hf_hub_url(repo_id, filename, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=timeout_s, endpoint=endpoint)
        return Path(hf_hub_download(repo_id, filename, cache_dir=hub_cache(), endpoint=endpoint, etag_timeout=timeout_s))
    except Exception as err:  # httpx, huggingface_hub and OS errors: all mean "not downloaded"
        if is_missing_on_hub(err):
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise HubUnavailable(f"could not download {url} ({type(err).__name__}: {reason})") from None


def is_missing_on_hub(err: Exception) -> bool:
    """Whether ``err`` is the Hub's answer that the repository has no such file (HTTP 404), as opposed
    to a failure to ask (huggingface_hub's LocalEntryNotFoundError derives from the same class)."""
    from huggingface_hub import errors

    remote = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)  # older huggingface_hub: EntryNotFoundError
    return isinstance(err, remote) and not isinstance(err, errors.LocalEntryNotFoundError)


def hub_config(backbone: str, repo_id: str) -> Path:
    """The repository's ``config.json`` in the hub cache, downloaded when missing and allowed."""
    found = cached_file(repo_id, CONFIG_FILENAME)
    if found is not None:
        return found
    try:
        return hub_download(repo_id, CONFIG_FILENAME)
    except Exception as err:  # HubUnavailable, or the repository has no config.json
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubUnavailable(
            f"{backbone}: its {CONFIG_FILENAME} (architecture, input size, normalisation) is not on this machine: "
            f"{reason}. To fix: {copy_instructions(backbone, repo_id)}"
        ) from None


def hub_info(backbone: str) -> BackboneInfo:
    """The backbone's metadata from the Hub's pretrained config, read as timm reads it."""
    from timm.models import PretrainedCfg
    from timm.models._hub import load_model_config_from_path  # timm's own parser of Hub configs

    repo_id = hub_repo_id(backbone)
    if repo_id is None:
        raise KeyError(f"{backbone!r} is not timm:hf-hub:ORG/REPO")
    config = hub_config(backbone, repo_id)
    try:
        pretrained_cfg, architecture, model_args = load_model_config_from_path(config.parent)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{config}: not a timm model config ({type(err).__name__}: {err}); is {repo_id} a timm "
                         "model repository?") from None
    import timm

    if not timm.is_model(architecture):
        raise ValueError(f"{config}: architecture {architecture!r} is not a model of the installed timm "
                         f"{timm.__version__}; upgrade timm")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)} - {"source", "file"}  # timm would refuse other keys
    pretrained_cfg = {k: v for k, v in pretrained_cfg.items() if k in known}
    pretrained_cfg["hf_hub_id"] = repo_id
    model_args = {k: v for k, v in (model_args or {}).items() if k not in _OWN_ARGUMENTS}
    return timm_info(
        backbone, architecture, f"timm {architecture} from the Hugging Face Hub ({repo_id})",
        cfg=pretrained_cfg, extra={"pretrained_cfg": pretrained_cfg, "model_args": model_args, "config": str(config)},
    )


register_family(BackboneFamily(HF_HUB_PREFIX, is_repo_id, lambda name: (hub_info(name), build_timm)))
