"""The arm ``ferbench export`` takes when none is named: the report's Recommendation's best model by the
task's headline test metric (``TaskInfo.headline``: test accuracy, or macro F1 over labels for a
multi-label task), and of that model's arms (seeds, folds) the one with the highest value (ties: the
first in the grid).

Why here and not in the export code: the choice must be the report's own, from the same tables with the
same exclusions (models with no completed trial, models that did not learn), so it runs the
Recommendation's own steps (``ferbench.reports.recommendation``) on the tables ``build_report`` builds.
The command line reaches it through ``ferbench.reports`` (the layers depend one way: harness ← reports).
"""

from __future__ import annotations

from pathlib import Path

from ferbench.harness.tasks import get_task_info
from ferbench.reports.recommendation import best_model, model_of_each_arm
from ferbench.reports.collect import read_spec
from ferbench.harness.tree_spec import is_tree
from ferbench.reports.comparison import tidy_tables
from ferbench.reports.derived import fold_test_train_ratio


def recommended_arm(experiment_dir: str | Path) -> str:
    """The arm id of the Recommendation's best model by the task's headline metric with the highest value of
    it; a ``ValueError`` (one line) when the experiment has no completed arm with that metric."""
    experiment_dir = Path(experiment_dir)
    spec = read_spec(experiment_dir).spec
    ratio = fold_test_train_ratio(spec.split)
    tables = tidy_tables(experiment_dir, spec)
    summary, trials = tables["summary"], tables["trials"]
    # export writes one network: a decision tree of CNNs is never the default
    summary, trials = summary[~summary["backbone"].map(is_tree)], trials[~trials["backbone"].map(is_tree)]
    metric = get_task_info(spec.task).headline
    model = best_model(summary, trials, ratio, metric)
    if model is None:
        raise ValueError(f"{experiment_dir}: no completed arm has a {metric}, so the report recommends none; "
                         f"name the arm to export: ferbench export {experiment_dir} ARM")
    arms = trials[(trials["status"] == "completed") & (model_of_each_arm(trials, summary) == model)]
    return str(arms.sort_values(metric, ascending=False, kind="stable")["arm_id"].iloc[0])
