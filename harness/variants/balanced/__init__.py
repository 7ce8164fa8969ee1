"""``balanced``: class balancing (Moravčík 2021, section 5.1.1), by oversampling and/or a class-weighted loss.

Its spec section is ``balanced`` (``BalancedSettings``); its trial hooks are ``trainer.BalancedTrainer``
and the sampling itself is ``sampling``. It writes no files of its own and has no report section:
its arms are compared with the baseline's in the report's paired differences.
"""

from pydantic import Field, model_validator

from ferbench.harness.strict_model import StrictModel
from ferbench.harness.variants.registry import VariantInfo, register_variant


class BalancedSettings(StrictModel):
    """Class balancing of the balanced variants (Moravčík 2021, section 5.1.1)."""

    oversample: bool = Field(True, description="each epoch draws M = fraction × (largest class count) images of every class")
    fraction: float = Field(0.8, gt=0, le=1, description="M as a fraction of the largest training class (the thesis: about 0.8)")
    class_weighted_loss: bool = Field(False, description="weight the cross-entropy by n / (K · n_class) of the training set")

    @model_validator(mode="after")
    def _does_something(self) -> "BalancedSettings":
        if not (self.oversample or self.class_weighted_loss):
            raise ValueError("balanced: oversample and class_weighted_loss are both false; enable one, or use variant baseline")
        return self


VARIANT = register_variant(VariantInfo(
    name="balanced",
    description="equal images per class each epoch (oversampling) and/or a class-weighted loss",
    settings_key="balanced",
    settings=BalancedSettings,
    trainer="ferbench.harness.variants.balanced.trainer:BalancedTrainer",
))
