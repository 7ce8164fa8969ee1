"""Task kinds as units (see ``registry``); the built-in one is single-label ``classification``."""

from ferbench.harness.tasks.registry import TaskInfo, get_task, get_task_info, list_tasks, register_task

CLASSIFICATION = register_task(TaskInfo(
    name="classification",
    description="one emotion class per image: softmax cross-entropy; accuracy, macro/weighted F1, per-class scores",
    implementation="ferbench.harness.tasks.classification:SingleLabelClassification",
    report="ferbench.reports.tasks.classification:task_report",
))

__all__ = ["CLASSIFICATION", "TaskInfo", "get_task", "get_task_info", "list_tasks", "register_task"]
