"""Training variants as units: ``baseline``, ``balanced``, ``pseudo_label`` (see ``registry``)."""

from ferbench.harness.variants.registry import (
    REFERENCE,
    VariantInfo,
    get_variant,
    list_variants,
    parse_combination,
    register_variant,
    settings_sections,
    used_variants,
    uses,
)
from ferbench.harness.variants import baseline, pseudo_label, balanced  # noqa: E402,F401  (registers the built-ins)

__all__ = ["REFERENCE", "VariantInfo", "get_variant", "list_variants", "parse_combination", "register_variant",
           "settings_sections", "used_variants", "uses"]
