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


TASKS: Registry[TaskInfo] = Registry("task")
register_task = TASKS.register
list_tasks = TASKS.names
get_task_info = TASKS.get


def get_task(name: str):
    """An instance of the task ``name``'s implementation."""
    return load_object(get_task_info(name).implementation)()
