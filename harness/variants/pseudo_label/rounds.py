"""The trial side of a pseudo-labelling round's end: score the round, record it, choose the next
round's pseudo-labels (``ferbench.harness.variants.pseudo_label.selection``) or stop, and write the round artifacts atomically
into the trial folder (the working directory Tune gives the trial).

The arm's result is the round chosen on validation (``ferbench.harness.train.selection.select_round``), not the
last one: its test artifacts and weights are published under the headline names as soon as it is
the best so far, and the trial's last row carries its test metrics (``headline_metrics``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ferbench.harness.variants.pseudo_label import selection as pl
from ferbench.harness.study.atomic import atomic_write_bytes, atomic_write_json
from ferbench.harness.train.selection import ROUND_RULE, select_round
from ferbench.harness.study.layout import ROUND_POOL_FILE, ROUNDS_FILE
from ferbench.harness.train.test_artifacts import publish_round, save_selected_weights
from ferbench.harness.train.loop import predict
from ferbench.harness.variants.trainer import RoundState

TEST_SCALARS = ("test_acc", "test_loss", "test_macro_f1", "test_weighted_f1", "test_balanced_acc")


def end_round(trial, settings, rounds: RoundState, state: pl.PseudoLabelState, metrics: dict, per_class: dict) -> None:
    """Record the finished round, then choose the next round's pseudo-labels (or stop)."""
    num_classes = len(trial.payload.class_names)
    val_logits = predict(trial.model, trial.images, trial.split["val"], **trial.eval_kwargs)
    val_scores, _ = trial.task.scores(val_logits, trial.labels[trial.split["val"]], num_classes)
    evaluation = {
        "epoch": metrics["epoch"], "selected_epoch": metrics["selected_epoch"], "train_size": metrics["train_size"],
        "val_acc": val_scores["acc"], "val_macro_f1": val_scores["macro_f1"], **{k: metrics[k] for k in TEST_SCALARS},
        "test_per_class": {k: per_class[k] for k in ("precision", "recall", "f1", "support")},
        "test_confusion_matrix": per_class["confusion_matrix"],
    }
    state.records.append(pl.round_record(rounds.round, state, trial.labels[state.pseudo_idx], num_classes, evaluation))
    selected = select_round(state.records)
    if selected == rounds.round:  # the best round so far: its files and weights become the trial's
        publish_round(selected)
        save_selected_weights(trial.model)
    if rounds.round >= settings.max_rounds:
        rounds.finish(f"max_rounds {settings.max_rounds} reached")
    else:
        pool = trial.split["unlabeled"]
        plan, candidates, probabilities = pl.plan_next_round(
            pool, trial.predict_probabilities, state.pseudo_idx, state.pseudo_labels, threshold=settings.threshold,
            repredict=settings.repredict, cap=settings.per_class_cap, num_classes=num_classes,
        )
        _write_pool_predictions(rounds.round + 1, candidates, probabilities, plan)
        if plan.stop_reason:
            rounds.finish(plan.stop_reason)
        else:
            added_labels = plan.pseudo_labels[torch.isin(plan.pseudo_idx, plan.added)]
            summary = pl.selection_summary(plan, trial.labels[plan.added], added_labels, num_classes)
            state.adopt(plan, summary)
            rounds.advance()
    atomic_write_json(Path(ROUNDS_FILE).resolve(), {
        "class_names": list(trial.payload.class_names), "settings": settings.model_dump(),
        "pool_size": len(trial.split["unlabeled"]), "pool_labelled": bool((trial.labels[trial.split["unlabeled"]] != pl.NOT_A_TARGET).all()),
        "finished": rounds.finished, "stop_reason": rounds.stop_reason,
        "selected_round": selected, "selection_rule": ROUND_RULE,
        "rounds": state.records,
    })


def headline_metrics(records: list[dict], last_row: dict) -> dict:
    """The finished trial's result: the selected round's test metrics under the ``test_*`` names,
    the last round's kept as ``last_round_test_*``, and which rounds they are."""
    selected = select_round(records)
    chosen = next(record for record in records if record["round"] == selected)
    return {
        **{f"last_round_{name}": last_row[name] for name in TEST_SCALARS}, **{name: chosen.get(name) for name in TEST_SCALARS},
        "selected_epoch": chosen.get("selected_epoch"), "pl_selected_round": selected, "pl_last_round": records[-1]["round"],
    }


def _write_pool_predictions(round_no: int, candidates: torch.Tensor, probabilities: torch.Tensor, plan: pl.RoundPlan) -> None:
    """What round ``round_no``'s pseudo-labels were chosen from: no hidden labels in this file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, candidates=candidates.numpy(), probabilities=probabilities.numpy(),
                        pseudo_indices=plan.pseudo_idx.numpy(), pseudo_labels=plan.pseudo_labels.numpy())
    atomic_write_bytes(Path(ROUND_POOL_FILE.format(round=round_no)).resolve(), buffer.getvalue())
