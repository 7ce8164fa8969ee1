"""The task registry: what a study predicts, as a unit registered by name.

A task owns the head's outputs, the loss, the per-epoch and test metrics, the test artifacts and
the report tables that follow from them. The trial loop, the engine and the report skeleton call
a task only through the interface of ``ferbench.harness.tasks.classification.SingleLabelClassification``
(today's emotion classification), so another task kind (multi-label action units, cascades of
models) is one more module registered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferbench.harness.units import Registry, load_object


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    implementation: str  # "module:Class"; imported where a trial runs, not where a spec is read
    report: str  # "module:function(ReportContext) -> str": its tables, figures and Markdown (the report layer)
    losses: tuple[str, ...] = ("cross_entropy",)  # train.loss values it trains with; the first is train.loss=auto's
    select_metrics: tuple[str, ...] = ("val_acc", "val_loss")  # per-epoch metrics train.select_metric may name
    variants: tuple[str, ...] | None = None  # the training variants it supports; None: every registered one
    headline: str = "test_acc"  # the test metric the Recommendation's Pareto set, decision rule and `ferbench export` rank by
    class_samples: bool = True  # the report shows sample test images beside each model's class probabilities
    metrics_text: str = (  # the report's "Metrics" lines on what the task measures beyond train/val accuracy and loss
        "- Test macro / weighted F1, balanced accuracy, per-class precision / recall / F1 and the confusion "
        "matrix: torchmetrics, computed in each trial from its test predictions (kept as `test_predictions.npz`)."
    )


TASKS: Registry[TaskInfo] = Registry("task")
register_task = TASKS.register
list_tasks = TASKS.names
get_task_info = TASKS.get


def get_task(name: str, spec=None):
    """An instance of the task ``name``'s implementation, configured by the study ``spec`` (its loss, thresholds);
    without a spec it only turns logits into probabilities (``ferbench predict``)."""
    return load_object(get_task_info(name).implementation)(spec)
