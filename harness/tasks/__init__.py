"""Task kinds as units (see ``registry``): single-label ``classification`` (one emotion per image) and
``multilabel`` (several labels at once, e.g. facial action units)."""

from ferbench.harness.tasks.registry import TaskInfo, get_task, get_task_info, list_tasks, register_task

CLASSIFICATION = register_task(TaskInfo(
    name="classification",
    description="one emotion class per image: softmax cross-entropy; accuracy, macro/weighted F1, per-class scores",
    implementation="ferbench.harness.tasks.classification:SingleLabelClassification",
    report="ferbench.reports.tasks.classification:task_report",
))

MULTILABEL = register_task(TaskInfo(
    name="multilabel",
    description="several labels per image (facial action units): a sigmoid per label; BCE, LSEP or 1 − P·R; "
                "per-label precision / recall / F1 at 0.5 or thresholds chosen on validation",
    implementation="ferbench.harness.tasks.multilabel:MultiLabelClassification",
    report="ferbench.reports.tasks.multilabel:task_report",
    losses=("bce", "bce_weighted", "lsep", "lpr", "lpr_macro"),
    select_metrics=("val_acc", "val_loss", "val_f1_macro"),
    variants=("baseline",),
    headline="test_macro_f1",
    class_samples=False,  # per-label probabilities are in the precision-recall curves and test_predictions.npz
    metrics_text=(
        "- Multi-label: `train_acc` / `val_acc` / `test_acc` are Keras's binary accuracy, the share of correct label "
        "decisions (at 0.5 during training; at the study's thresholds on test), averaged over labels and images; "
        "MCR and MOFR use it. `val_f1_macro`: the mean F1 over labels at 0.5 after each epoch.\n"
        "- Test: per-label precision / recall / F1 / support / average precision at the study's thresholds "
        "(`multilabel.threshold`); `test_macro_f1` (the mean F1 over labels, the headline), `test_micro_f1`, "
        "`test_weighted_f1`, `test_subset_acc` (every label right), `test_balanced_acc` (mean over labels of "
        "(TPR + TNR) / 2), computed in each trial from its test predictions (kept, with the thresholds, as "
        "`test_predictions.npz`)."
    ),
))

__all__ = ["CLASSIFICATION", "MULTILABEL", "TaskInfo", "get_task", "get_task_info", "list_tasks", "register_task"]
