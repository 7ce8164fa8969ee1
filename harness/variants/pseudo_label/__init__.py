"""``pseudo_label``: teacher/student pseudo-labelling (Arsirii & Petrosiuk 2023).

The unit: its spec section ``pseudo_label`` (``PseudoLabelSettings``), the check that its arms have
an unlabeled pool, the round logic as pure functions (``selection``), the trial side of a round's end
(``rounds``), the trial hooks (``trainer.PseudoLabelTrainer``), the files it writes into each trial
folder and the report's pseudo-labelling section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ferbench.harness.strict_model import StrictModel
from ferbench.harness.study.layout import ROUND_POOL_FILE, ROUNDS_FILE
from ferbench.harness.variants.registry import VariantInfo, register_variant, uses

NAME = "pseudo_label"
ARSIRII_UNLABELED_FRACTION = 0.1  # Arsirii & Petrosiuk: 1,228 of RAF-DB's 12,271 training images


class PseudoLabelSettings(StrictModel):
    """Teacher/student pseudo-labelling (Arsirii & Petrosiuk 2023), used by the pseudo_label variants."""

    unlabeled_path: str | None = Field(
        None, description="external unlabeled pool: a folder of images (recursive) or a CSV with a pixels column; "
        "replaces the held-out split.unlabeled_fraction (its labels, if any, are never read)"
    )
    threshold: float = Field(0.99, ge=0, lt=1, description="add a pool image when its max softmax probability exceeds this")
    max_rounds: int = Field(3, ge=1, le=50, description="student rounds after the teacher; fewer when nothing clears the threshold")
    epochs_per_round: int | None = Field(None, ge=1, description="epochs of each student round (default: train.epochs)")
    student_init: Literal["teacher", "initial"] = Field(
        "teacher", description="each student starts from the previous model's weights, or from the arm's initial weights"
    )
    repredict: bool = Field(
        False, description="re-predict the whole pool every round (labels may change) instead of fixing images once added"
    )
    per_class_cap: int | None = Field(None, ge=1, description="at most this many pseudo-labelled images per class (most confident kept)")


def uses_pseudo_label(variant: str) -> bool:
    return uses(variant, NAME)


def check_spec(spec) -> None:
    """A pseudo-label arm needs an unlabeled pool: the paper's 10% of train unless set (checked only
    when the grid has such an arm, so excluding them leaves the other arms' split unchanged)."""
    if spec.pseudo_label.unlabeled_path is not None:
        if spec.split.unlabeled_fraction:
            raise ValueError(
                f"pseudo_label.unlabeled_path and split.unlabeled_fraction ({spec.split.unlabeled_fraction}) both give "
                "an unlabeled pool; use the external pool (set split.unlabeled_fraction=0) or the held-out share (drop the path)"
            )
        return
    if "unlabeled_fraction" not in spec.split.model_fields_set:
        spec.split.unlabeled_fraction = ARSIRII_UNLABELED_FRACTION
    elif spec.split.unlabeled_fraction == 0:
        raise ValueError(
            "split.unlabeled_fraction: 0 leaves variant pseudo_label no unlabeled pool; "
            f"set a share of train such as {ARSIRII_UNLABELED_FRACTION} (Arsirii), or drop the variant"
        )


VARIANT = register_variant(VariantInfo(
    name=NAME,
    description="teacher/student rounds: confident predictions on an unlabeled pool join the training set",
    settings_key=NAME,
    settings=PseudoLabelSettings,
    trainer="ferbench.harness.variants.pseudo_label.trainer:PseudoLabelTrainer",
    report_section="ferbench.reports.variants.pseudo_label:section",
    artifacts=(ROUNDS_FILE, ROUND_POOL_FILE, "test_predictions_round{round}.npz", "test_per_class_round{round}.json"),
    has_rounds=True,
    check_spec=check_spec,
    check_inputs="ferbench.harness.variants.pseudo_label.data:check_inputs",
    unlabeled_pool="ferbench.harness.variants.pseudo_label.data:unlabeled_pool",
))
