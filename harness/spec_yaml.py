"""A study spec as a study file for people: every key's meaning beside it, and a JSON schema for editors.

``spec_to_yaml`` (harness/spec.py) stays the record experiments keep (``ferbench/spec.yaml``): every
key, no comments. What ``ferbench run --print-spec`` shows is meant to be read and edited, so each
key carries its Field description as a ``#`` comment above it, and the data keys the chosen
``data.format`` never reads (SynthFER's generation settings for a real dataset, ``data.path`` for
SynthFER, ...) are left out while they hold their defaults. Leaving a default out changes nothing
when the file is loaded again, so the printed text still resolves to the same spec; a key that is
set but unused stays, marked as such.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from ferbench.harness.spec import DataSpec, StudySpec

# data.* keys that only some formats read; 'auto' may detect any real format, so it keeps theirs.
REAL_FORMATS = frozenset({"fer2013", "fer2013_folders", "rafdb", "ckplus", "folder", "disfa", "multilabel_csv", "auto"})
DATA_KEY_FORMATS: dict[str, frozenset[str]] = {
    **{key: frozenset({"synthfer"}) for key in ("num_images", "image_size", "label_noise", "seed")},
    **{key: REAL_FORMATS for key in ("path", "strict", "cache", "face_detect", "face_size")},
    "ferplus_labels": frozenset({"fer2013", "auto"}),
    **{key: frozenset({"ckplus", "auto"}) for key in ("contempt", "ckplus_frames")},
    "class_map": frozenset({"folder", "fer2013_folders", "ckplus", "auto"}),
    **{key: frozenset({"disfa", "auto"}) for key in ("action_units", "au_threshold", "frame_step", "frame_size")},
    **{key: frozenset({"multilabel_csv", "auto"}) for key in ("image_column", "label_columns", "subject_column")},
}
COMMENT_WIDTH = 100
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def unused_data_keys(data_format: str) -> list[str]:
    """The ``data.*`` keys a study with ``data.format = data_format`` never reads."""
    return [key for key, formats in DATA_KEY_FORMATS.items() if data_format not in formats]


def _scalar_text(value: Any) -> str:
    """``value`` (JSON-like) as one line of YAML that reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True, sort_keys=False)
    text = text.removesuffix("\n...\n").removesuffix("\n")
    # A string with line breaks would come out as a multi-line scalar; JSON is also YAML, on one line.
    return json.dumps(value, ensure_ascii=False) if "\n" in text else text


def _comment(text: str, indent: str) -> list[str]:
    width = max(40, COMMENT_WIDTH - len(indent) - 2)
    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.replace("``", "`").split()), width)]


def _section_text(model: BaseModel, dumped: dict[str, Any], path: str, spec: BaseModel, depth: int) -> list[str]:
    indent = "  " * depth
    data_format = model.format if isinstance(model, DataSpec) else None  # the study's data, or an eval dataset's
    unused = set(unused_data_keys(data_format)) if data_format else set()
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        note = None
        if name in unused:
            if value == field.get_default(call_default_factory=True):
                continue  # left out: reading the file again gives the same default
            note = f"not used with data.format: {data_format}"
        description = field.description
        if description is None and isinstance(value, BaseModel) and type(value).__doc__:
            description = type(value).__doc__.strip().split("\n\n")[0]
        if depth == 0 and lines and (isinstance(value, BaseModel) or lines[-1].startswith(" ")):
            lines.append("")  # a blank line around each top-level section
        for text in (description, note):
            if text:
                lines.extend(_comment(text, indent))
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines.extend(_section_text(value, dumped[name], f"{path}.{name}" if path else name, spec, depth + 1))
        elif isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
            lines.append(f"{indent}{name}:")  # a section per item (eval.datasets), each opened by a lone '-'
            for index, item in enumerate(value):
                lines.append(f"{indent}  -")
                lines.extend(_section_text(item, dumped[name][index], f"{path}.{name}.{index}", spec, depth + 2))
        elif isinstance(value, dict) and value and all(isinstance(item, BaseModel) for item in value.values()):
            lines.append(f"{indent}{name}:")  # a section per key (trees.<name>)
            for key, item in value.items():
                lines.append(f"{indent}  {_scalar_text(key)}:")
                lines.extend(_section_text(item, dumped[name][key], f"{path}.{name}.{key}", spec, depth + 2))
        else:
            lines.append(f"{indent}{name}: {_scalar_text(dumped[name])}")
    for name in model.model_extra or {}:  # keys a section allows beyond its fields (extra grid axes)
        lines.append(f"{indent}{_scalar_text(name)}: {_scalar_text(dumped[name])}")
    return lines


def commented_spec_yaml(spec: BaseModel) -> str:
    """The spec as a study file: a ``#`` comment with each key's description, keys that the data
    format does not read left out while they hold their defaults. Loads back as the same spec."""
    header = (f"Study {spec.study!r}, resolved; `ferbench run THIS_FILE` runs it. Data keys that "
              f"data.format: {spec.data.format} does not read are left out (defaults).")
    body = _section_text(spec, spec.model_dump(mode="json"), "", spec, 0)
    return "\n".join([*_comment(header, ""), "", *body]) + "\n"


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of a study file, for editors' completion and checks (yaml-language-server).

    ``study`` is not required in a file: the loader takes the file name when it is missing. What
    only Python can check (registered backbones, variants, whole-spec rules) is not in the schema;
    ``ferbench run --print-spec`` checks everything."""
    schema = StudySpec.model_json_schema()
    schema["required"] = [key for key in schema.get("required", []) if key != "study"]
    schema["properties"]["study"].pop("default", None)
    return {"$schema": SCHEMA_DIALECT, "title": "FERBench study spec", **{k: v for k, v in schema.items() if k != "title"}}
