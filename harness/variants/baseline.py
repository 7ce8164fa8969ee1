"""``baseline``: one round of ``train.epochs`` epochs on the labelled training part, nothing else."""

from ferbench.harness.variants.registry import REFERENCE, VariantInfo, register_variant

register_variant(VariantInfo(name=REFERENCE, description="train on the labelled training part as it is"))
