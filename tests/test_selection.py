"""Which epoch a round tests (train.select) and which round is a pseudo-labelling arm's result
(harness/train/selection.py, ferbench.harness.variants.pseudo_label.rounds.headline_metrics), on known numbers."""

from __future__ import annotations

import math

import pytest
import torch

from ferbench.harness.variants.pseudo_label.rounds import headline_metrics
from ferbench.harness.train.selection import BestEpoch, best_index, select_round
from ferbench.harness.spec import SpecError, load_spec

NAN = math.nan


def test_best_index_takes_the_first_of_equals_and_skips_missing_values():
    assert best_index([0.2, 0.5, 0.5, 0.1]) == 1
    assert best_index([0.9, 0.4, 0.4], higher_is_better=False) == 1
    assert best_index([NAN, 0.3, None, 0.3]) == 1
    assert best_index([NAN, None]) is None and best_index([]) is None


def _record(round_no: int, val_f1: float, test_acc: float) -> dict:
    return {"round": round_no, "val_macro_f1": val_f1, "test_acc": test_acc, "test_loss": 1.0 + round_no,
            "test_macro_f1": test_acc / 2, "test_weighted_f1": test_acc / 3, "test_balanced_acc": test_acc / 4,
            "selected_epoch": 10 + round_no}


def test_the_round_is_chosen_on_validation_never_on_test():
    records = [_record(0, 0.50, 0.90), _record(1, 0.61, 0.10), _record(2, 0.55, 0.99)]
    assert select_round(records) == 1  # round 2 tests better: irrelevant
    tied = [_record(0, 0.50, 0.1), _record(1, 0.61, 0.2), _record(2, 0.61, 0.9)]
    assert select_round(tied) == 1  # ties: the earlier round
    assert select_round([_record(0, NAN, 0.5), _record(1, 0.2, 0.1)]) == 1
    without_test = [{"round": r["round"], "val_macro_f1": r["val_macro_f1"]} for r in records]
    assert select_round(without_test) == 1  # nothing but validation is read
    with pytest.raises(ValueError):
        select_round([])


def test_headline_metrics_are_the_selected_rounds_and_keep_the_last_rounds():
    records = [_record(0, 0.50, 0.70), _record(1, 0.61, 0.80), _record(2, 0.55, 0.60)]
    last_row = {"test_acc": 0.60, "test_loss": 3.0, "test_macro_f1": 0.30, "test_weighted_f1": 0.20, "test_balanced_acc": 0.15}
    headline = headline_metrics(records, last_row)
    assert headline["test_acc"] == 0.80 and headline["test_macro_f1"] == 0.40 and headline["test_loss"] == 2.0
    assert headline["last_round_test_acc"] == 0.60 and headline["last_round_test_loss"] == 3.0
    assert (headline["pl_selected_round"], headline["pl_last_round"], headline["selected_epoch"]) == (1, 2, 11)


class _Scalar(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([value]))


def _offer(best: BestEpoch, round_epoch: int, value: float, weight: float) -> None:
    best.offer({"epoch": 100 + round_epoch, "round_epoch": round_epoch, best.metric: value}, _Scalar(weight))


def test_best_epoch_keeps_the_first_best_trained_epoch_and_its_weights():
    best = BestEpoch("val_acc")
    _offer(best, 0, 0.99, 0.0)  # the untrained evaluation never counts, however good
    assert best.weights is None
    for round_epoch, value in ((1, 0.4), (2, 0.7), (3, 0.7), (4, 0.6)):
        _offer(best, round_epoch, value, float(round_epoch))
    assert (best.round_epoch, best.epoch, best.value) == (2, 102, 0.7)  # tie with epoch 3: the earlier
    model = _Scalar(-1.0)
    assert best.restore(model) == 2 and model.w.item() == 2.0
    by_loss = BestEpoch("val_loss")
    for round_epoch, value in ((1, 1.5), (2, 0.9), (3, 1.1)):
        _offer(by_loss, round_epoch, value, float(round_epoch))
    assert by_loss.round_epoch == 2  # lowest loss
    nan_first = BestEpoch("val_acc")
    _offer(nan_first, 1, NAN, 1.0)
    _offer(nan_first, 2, 0.1, 2.0)
    assert nan_first.round_epoch == 2


def test_best_epoch_survives_a_round_trip_through_a_checkpoint(tmp_path):
    best = BestEpoch("val_acc")
    _offer(best, 1, 0.5, 3.0)
    torch.save({"round_best": best.to_dict()}, tmp_path / "checkpoint.pt")
    loaded = BestEpoch.from_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["round_best"])
    _offer(loaded, 2, 0.4, 4.0)  # worse: the carried weights stay
    model = _Scalar(0.0)
    assert loaded.restore(model) == 1 and model.w.item() == 3.0
    with pytest.raises(RuntimeError):
        BestEpoch("val_acc").restore(model)


def test_select_options_and_the_arsirii_study():
    assert load_spec("quick").train.select == "last"  # today's behaviour stays the default
    spec = load_spec("quick", ["train.select=best_val", "train.select_metric=val_loss"])
    assert (spec.train.select, spec.train.select_metric) == ("best_val", "val_loss")
    with pytest.raises(SpecError, match="train.select"):
        load_spec("quick", ["train.select=best_test"])
    arsirii = load_spec("arsirii2023")
    assert arsirii.pseudo_label.max_rounds == 2  # the paper: teacher + 2 students (363, then 95 images added)
    assert (arsirii.train.select, arsirii.train.select_metric) == ("best_val", "val_acc")  # its ModelCheckpoint
