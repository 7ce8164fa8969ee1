"""The table ``ferbench backbones`` prints: counted once, then kept, so that listing does not import
torch and timm.

Every network is built on the meta device (shapes without storage): counting needs no weights, and
building VGG-Face's 134 M parameters for real took seconds and over a gigabyte. Even so, counting
needs torch, torchvision and timm imported: about 4 s of a 5 s command on a 2-core laptop. The table changes only when
FERBench's backbone code, the Smelyakov study's reading or the versions of torch, timm and deepface
change, so it is kept under a key made of exactly those: the table shipped with FERBench (for the
versions it was computed with) and, for any other versions, a copy in the user's cache written on
first use. Regenerate the shipped one after changing a backbone:
``python -m ferbench.harness.cli.backbones_table``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

TABLE_FILE = "backbones_table.json"
VERSIONED = ("ferbench", "torch", "timm", "deepface")
PAPER_STUDY = "smelyakov2022"
PAPER_STUDY_FILE = ("ferbench.harness.study.studies", f"{PAPER_STUDY}.yaml")


def paper_reading() -> tuple[int, Any]:
    """(k, BackboneOptions) of the built-in Smelyakov study: the paper's reading."""
    from ferbench.harness.spec import load_spec

    spec = load_spec(PAPER_STUDY)
    return spec.train.freeze.k, spec.model.backbone_options()


def _paper_trainable(name: str, k: int, options: Any, model: Any) -> dict[str, int | None]:
    """Keras layers after excluding the last one, and the backbone parameters the last ``k`` train
    (Keras' count, and what the PyTorch port trains: the same modules, without Keras-only conv biases).
    ``model`` is the default build, used unless the paper's options add a module (VGG-Face's fc8)."""
    from ferbench.backbones import meta_backbone
    from ferbench.backbones.keras_layers import keras_layer_list

    layers = keras_layer_list(name, options.vggface_descriptor)
    if layers is None:
        return {"keras_layers": None, "paper_trainable_params": None, "paper_trainable_params_torch": None}
    try:
        modules = [model.get_submodule(path) for path in layers.torch_modules(k)]
    except AttributeError:
        model = meta_backbone(name, num_classes=7, options=options)
        modules = [model.get_submodule(path) for path in layers.torch_modules(k)]
    torch_count = sum(p.numel() for module in modules for p in module.parameters())
    return {"keras_layers": len(layers.paper_layers), "paper_trainable_params": layers.trainable_params(k),
            "paper_trainable_params_torch": torch_count}


def compute_table() -> dict[str, Any]:
    """``{"k": the paper reading's k, "rows": one row per registered backbone}``, counted on the meta device."""
    from ferbench.backbones import backbone_parameter_counts, get_backbone_info, list_backbones, meta_backbone

    k, options = paper_reading()
    rows = []
    for name in list_backbones():
        info = get_backbone_info(name)
        model = meta_backbone(name, num_classes=7)
        rows.append({
            "name": name, "family": info.family, "input_size": info.input_size,
            "fixed_input_size": info.fixed_input_size, "channels": info.channel_order,
            "mean": list(info.mean), "std": list(info.std),
            "embedding_dim": int(getattr(model, "num_features", 0)) or info.embedding_dim,
            **backbone_parameter_counts(name, model),
            **_paper_trainable(name, k, options, model),
            "pretrained": list(info.pretrained_sources), "random_init": info.random_init,
            "description": info.description,
        })
    return {"k": k, "rows": rows}


def _package_dir(package: str) -> Path:
    spec = find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_path() -> Path:
    return _package_dir("ferbench.backbones") / TABLE_FILE


def user_path() -> Path:
    from ferbench.cache_dirs import cache_dir

    return cache_dir(TABLE_FILE)


def source_digest() -> str:
    """SHA-256 over the backbone package's code and recorded layer lists, and the paper study's file."""
    root = _package_dir("ferbench.backbones")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and p.name != TABLE_FILE
                   and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    study = _package_dir(PAPER_STUDY_FILE[0]) / PAPER_STUDY_FILE[1]
    digest.update(study.read_bytes())
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def table_key() -> dict[str, Any]:
    return {"source": source_digest(), "versions": {name: _version(name) for name in VERSIONED}}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and {"key", "k", "rows"} <= set(table) else None


def _write(path: Path, table: dict[str, Any]) -> None:
    from ferbench.harness.study.atomic import atomic_write_json

    atomic_write_json(path, table)


def load_table(compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{"k", "rows"}``: from the shipped table or the user's copy when their key is current, else
    ``compute()``, then kept in the user's cache (best effort: a read-only cache only costs time)."""
    key = table_key()
    for path in (shipped_path(), user_path()):
        table = _read(path)
        if table is not None and table["key"] == key:
            return table
    table = {"key": key, **compute()}
    try:
        _write(user_path(), table)
    except OSError:
        pass
    return table


def write_shipped() -> Path:
    """Recompute the table and write it beside the backbone code (run after changing a backbone)."""
    path = shipped_path()
    _write(path, {"key": table_key(), **compute_table()})
    return path


if __name__ == "__main__":
    print(f"wrote {write_shipped()}", file=sys.stderr)
