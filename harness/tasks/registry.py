"""The task registry: what a study predicts, as a unit registered by name.

A task owns the head's outputs, the loss, the per-epoch and test metrics, the test artifacts and
the report tables that follow from them. The trial loop, the engine and the report skeleton call
a task only through the interface of ``ferbench.harness.tasks.classification.SingleLabelClassification``
(today's emotion classification), so another task kind (multi-label action units, cascades of
models) is one more module registered here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    implementation: str  # "module:Class"; imported where a trial runs, not where a spec is read
    report: str  # "module:function(ReportContext) -> str": its tables, figures and Markdown (the report layer)


_TASKS: dict[str, TaskInfo] = {}


def register_task(info: TaskInfo) -> TaskInfo:
    if info.name in _TASKS:
        raise ValueError(f"task {info.name!r} is registered already")
    _TASKS[info.name] = info
    return info


def list_tasks() -> list[str]:
    return list(_TASKS)


def get_task_info(name: str) -> TaskInfo:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(_TASKS)}") from None


def get_task(name: str):
    """An instance of the task ``name``'s implementation."""
    info = get_task_info(name)
    module, _, attribute = info.implementation.partition(":")
    return getattr(importlib.import_module(module), attribute)()
