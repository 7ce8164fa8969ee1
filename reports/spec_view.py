"""The stored study spec as the report reads it: ``manifest.json``'s ``spec`` read back into the spec
model (``ferbench.harness.spec.StudySpec``) once, so every section reads typed settings whose defaults
are the model's, not dictionary look-ups with defaults of their own.

Experiment folders written by earlier versions still render. Their spec may hold what this version's
model refuses: a key since removed or renamed, a value no longer allowed (a backbone or a variant
dropped from a registry), a combination a newer rule forbids. Such a spec is read section by section
and field by field instead of failing as a whole:

- a key the model does not know is left out;
- a value its field refuses is kept as stored, unchecked: the report describes what ran, and a
  default in its place would describe something else. Settings of the report itself (``report.*``)
  are the exception: a refused one takes its default, since it only shapes the rendering;
- a section stored as something other than a mapping takes its defaults;
- a rule across fields (a model validator) that the stored values break is not applied (nor checked
  on a section that was itself read field by field);
- a section or field that is missing takes the model's default, as in any spec (no note: earlier
  versions simply did not write it).

Each of these is a note (``StoredSpec.notes``) that the report lists in its Study section. What the
report cannot be built without is a ``ValueError`` (``ferbench.reports.collect.read_spec`` turns it
into the one-line "damaged manifest" error): a spec that is not a mapping, a required field missing
(``grid.backbone``), or a refused ``train.epochs`` (the epoch windows, and which arms finished, are
counted from it).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ferbench.harness.spec import StudySpec

# Refused, these stop the report: nothing in their place describes the study.
ESSENTIAL = frozenset({"train.epochs"})
# Sections of settings that only shape the report: a refused value takes its default.
RENDERING = frozenset({"report"})
# What a rule across fields can raise besides ValueError, on values kept unchecked.
RULE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)


@dataclass(frozen=True)
class StoredSpec:
    """The stored spec in the spec model, and what reading it changed (empty for a spec this version wrote)."""

    spec: StudySpec
    notes: tuple[str, ...] = ()


def stored_spec(manifest: dict) -> StoredSpec:
    """``manifest["spec"]`` as a ``StudySpec``; see the module's docstring for what a spec that the
    current model refuses becomes. Raises ``ValueError`` (one line) when the report cannot use it."""
    notes: list[str] = []
    spec = _read(StudySpec, manifest.get("spec") if isinstance(manifest, dict) else None, "", notes)
    return StoredSpec(spec, tuple(dict.fromkeys(notes)))


def _section(annotation: Any) -> type[BaseModel] | None:
    """The nested spec model a field holds (``train.freeze``: ``FreezeSpec``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # ``SomeSpec | None``
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _message(problem: dict) -> str:
    return " ".join(str(problem["msg"]).removeprefix("Value error, ").split())


def _refusals(err: ValidationError) -> tuple[dict[str, str], list[str]]:
    """({field: why it was refused}, [rules across fields that failed]) of one model's validation."""
    fields: dict[str, str] = {}
    rules: list[str] = []
    for problem in err.errors():
        loc = problem["loc"]
        if loc and isinstance(loc[0], str):
            fields.setdefault(loc[0], _message(problem))
        else:
            rules.append(_message(problem))
    return fields, rules


def _named(name: str, rule: str) -> str:
    """A rule's message, led by the section it checks unless it names a setting itself."""
    return rule if name == "spec" or rule.startswith(name + ".") else f"{name}: {rule}"


def _read(model: type[BaseModel], raw: Any, where: str, notes: list[str]) -> BaseModel:
    """``raw`` as ``model``: validated whole when it can be, else field by field (``where``: the
    section's dotted path with a trailing dot, "" for the spec itself)."""
    name = where.rstrip(".") or "spec"
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: expected a mapping of settings, got {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        refused, _ = _refusals(err)
    checked: dict[str, Any] = {}  # each passed its field's checks (sections: already read)
    unchecked: dict[str, Any] = {}  # refused, kept as stored
    for key, value in raw.items():
        path = where + str(key)
        field = model.model_fields.get(key)
        if field is None:
            notes.append(f"{path}: not a setting of this version; left out (stored value {value!r})")
            continue
        section = _section(field.annotation)
        if section is not None and isinstance(value, dict):
            checked[key] = _read(section, value, path + ".", notes)
        elif key not in refused:
            checked[key] = value
        elif path in ESSENTIAL or (section is not None and field.is_required()):
            raise ValueError(f"{path}: {value!r} cannot be used ({refused[key]})")
        elif (section is not None or name.split(".")[0] in RENDERING) and not field.is_required():
            shown = "its defaults are" if section is not None else f"the default {field.get_default(call_default_factory=True)!r} is"
            notes.append(f"{path}: {value!r} is refused by this version ({refused[key]}); {shown} used instead")
        else:
            notes.append(f"{path}: {value!r} is refused by this version ({refused[key]}); shown as stored")
            unchecked[key] = value
    missing = [key for key, field in model.model_fields.items() if field.is_required() and key not in raw]
    if missing:
        raise ValueError(f"{where}{missing[0]}: required, and missing")
    if unchecked and any(model.model_fields[key].is_required() for key in unchecked):
        return _construct(model, checked, unchecked)  # no validation without it; its refusal is noted
    try:
        result = model.model_validate(checked)  # refused values left out: their defaults, for now
    except ValidationError as err:  # what is left is a rule across fields: each field passed alone
        _, rules = _refusals(err)
        notes.extend(f"{_named(name, rule)} (a rule of this version; not applied to the stored spec)" for rule in rules)
        return _construct(model, checked, unchecked)
    except RULE_ERRORS as err:  # a rule tripping over a section read field by field
        notes.append(f"{name}: the rules of this version could not be checked on it ({type(err).__name__}: {err})")
        return _construct(model, checked, unchecked)
    return _construct(model, {key: getattr(result, key) for key in model.model_fields if key in raw}, unchecked)


def _construct(model: type[BaseModel], values: dict[str, Any], unchecked: dict[str, Any]) -> BaseModel:
    """``model`` from ``values`` and the refused values kept as stored, without running its checks;
    the fields not given take their defaults (``values`` as stored where no validation produced them)."""
    given = {**values, **unchecked}
    return model.model_construct(_fields_set=set(given), **given)
