"""The variant registry: each training variant is a unit registered by name.

A variant declares its spec section (a pydantic model the study spec gains under
``settings_key``), a check of the whole spec for arms that use it, its trial hooks (a
``ferbench.harness.variants.trainer.VariantTrainer`` subclass, imported by the trial only), the
files it writes into trial folders and its report section (imported by the report only). The trial
loop, the engine and the report skeleton know variants only through this registry, so adding a
variant is one folder under ``harness/variants/`` plus its tests. ``grid.variant`` entries combine
variants with ``+`` (``pseudo_label+balanced``): each hook comes from the variant that defines it,
and at most one variant of a combination may run rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from ferbench.harness.units import Registry

REFERENCE = "baseline"  # the variant every other one is compared with (paired differences)
COMBINE = "+"


@dataclass(frozen=True)
class VariantInfo:
    name: str
    description: str
    settings_key: str | None = None  # the study spec section holding the variant's settings
    settings: type[BaseModel] | None = None
    trainer: str | None = None  # "module:Class", the trial hooks (``VariantTrainer``); None: the baseline's
    report_section: str | None = None  # "module:function(context) -> str", the report section
    artifacts: tuple[str, ...] = ()  # files (patterns) it writes into the trial folder
    has_rounds: bool = False  # trains more than one round (teacher, students)
    check_inputs: str | None = None  # "module:function(spec) -> [problem]": preflight's cheap checks of its inputs
    unlabeled_pool: str | None = None  # "module:function(spec, dataset) -> UnlabeledPool | None": extra unlabeled images
    check_spec: Callable[[Any], None] | None = None  # cross-section checks when an arm uses it; raises ValueError


VARIANTS: Registry[VariantInfo] = Registry("variant")


def register_variant(info: VariantInfo) -> VariantInfo:
    if COMBINE in info.name:
        raise ValueError(f"variant {info.name!r}: a name cannot contain {COMBINE!r}, which combines variants")
    return VARIANTS.register(info)


list_variants = VARIANTS.names
get_variant = VARIANTS.get


def parse_combination(variant: str) -> list[VariantInfo]:
    """The variants a ``grid.variant`` entry names (``a+b``); ValueError naming the problem."""
    names = variant.split(COMBINE)
    infos = [get_variant(name) for name in names]
    if len(set(names)) != len(names):
        raise ValueError(f"variant {variant!r} names a variant twice")
    if len(names) > 1 and REFERENCE in names:
        raise ValueError(f"variant {variant!r}: {REFERENCE} is training without a variant and combines with nothing")
    if sum(info.has_rounds for info in infos) > 1:
        raise ValueError(f"variant {variant!r}: at most one variant of a combination may train in rounds")
    return infos


def uses(variant: str, name: str) -> bool:
    """Whether the ``grid.variant`` entry ``variant`` includes the registered variant ``name``."""
    return name in variant.split(COMBINE)


def used_variants(arms: list[dict]) -> list[VariantInfo]:
    """The registered variants the arms use, each once, in registration order."""
    names = {name for arm in arms for name in arm["variant"].split(COMBINE)}
    return [info for name, info in VARIANTS.entries.items() if name in names]


def settings_sections() -> dict[str, type[BaseModel]]:
    """spec section name → its model, for every registered variant that has settings."""
    return {info.settings_key: info.settings for info in VARIANTS.entries.values() if info.settings_key and info.settings}
