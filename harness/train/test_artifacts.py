"""A trial's test-set artifacts in its folder (the working directory Tune gives the trial), all
written atomically: predictions, per-class scores and, where the checkpoints may not hold them, the
weights that were tested.

The headline files (``test_predictions.npz``, ``test_per_class.json``, ``selected_weights.pt``)
belong to the model whose test metrics are the trial's result. A pseudo-labelling arm tests every
round and keeps each round's files, so the round chosen on validation (``ferbench.harness.train.selection``) can be
published under the headline names whichever round it is.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ferbench.harness.study.atomic import atomic_write_bytes, atomic_write_json
from ferbench.harness.study.layout import SELECTED_WEIGHTS_FILE, TEST_PER_CLASS_FILE, TEST_PREDICTIONS_FILE

# SELECTED_WEIGHTS_FILE, the tested weights (state_dict): written with train.select best_val (the best
# epoch is in no checkpoint once rotated out) and for pseudo_label arms (the chosen round may not be the last).
ROUND_SUFFIX = "_round{round}"  # per-round copies: test_predictions_round1.npz, test_per_class_round1.json


def round_name(name: str, round_no: int | None) -> str:
    """``name`` itself (``round_no`` None), or the round's copy of it."""
    if round_no is None:
        return name
    path = Path(name)
    return f"{path.stem}{ROUND_SUFFIX.format(round=round_no)}{path.suffix}"


def write_test_artifacts(round_no: int | None, indices: torch.Tensor, targets: torch.Tensor, probabilities: torch.Tensor,
                         class_names: tuple[str, ...], per_class: dict, **arrays: np.ndarray) -> None:
    """Test predictions (no images) and per-class scores, under the headline names or the round's; ``arrays``
    are the task's own beside the predictions (multilabel: the thresholds applied)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, indices=indices.numpy(), targets=targets.numpy(), probabilities=probabilities.numpy(), **arrays)
    atomic_write_bytes(Path(round_name(TEST_PREDICTIONS_FILE, round_no)).resolve(), buffer.getvalue())
    atomic_write_json(Path(round_name(TEST_PER_CLASS_FILE, round_no)).resolve(), {"class_names": list(class_names), **per_class})


def publish_round(round_no: int) -> None:
    """Copy round ``round_no``'s test artifacts to the headline names."""
    for name in (TEST_PREDICTIONS_FILE, TEST_PER_CLASS_FILE):
        atomic_write_bytes(Path(name).resolve(), Path(round_name(name, round_no)).resolve().read_bytes())


def save_selected_weights(model: torch.nn.Module) -> None:
    """The tested weights, for ``torch.load(weights_only=True)`` and ``load_state_dict``."""
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, buffer)
    atomic_write_bytes(Path(SELECTED_WEIGHTS_FILE).resolve(), buffer.getvalue())
