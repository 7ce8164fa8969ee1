"""The experiment folder's layout: every file and folder name FERBench writes, in one leaf module.

Why a leaf: the report reads an experiment folder without Ray, torch or a dataset; importing these
names from the trainable would import all of them.

    <storage>/<name>/
        ferbench/manifest.json   resolved spec, versions, git commit, dataset fingerprint, hardware
        ferbench/spec.yaml       the resolved study spec (what --resume re-runs)
        ferbench/splits.npz      train/val/test indices used by every trial and by the report
        ferbench/grid.json       every grid arm with its preflight status (written last: marks an experiment)
        ferbench/samples.npz     a few test images per class, shown with each model's predictions
        ferbench/cross_dataset_mapping.json  eval.datasets: how each extra test set's labels were mapped, per fold
        <arm_id>_<trial_id>/     Tune trial folders: result.json, sealed checkpoint_NNNNNN/ folders
                                 (ferbench.harness.study.checkpoints), the test artifacts below
        report/                  report.md, report.html, tables/, figures/
"""

from __future__ import annotations

import re
from pathlib import Path

FERBENCH_DIR = "ferbench"

# In each checkpoint_NNNNNN/ folder (ferbench.harness.study.checkpoints).
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics so far, beside the weights in each checkpoint
SEAL_FILE = "seal.json"
# In a trial's metric rows.
FINAL_MARKER = "trial_finished"  # only in a trial's last row
TRIAL_FAILED = "trial_failed"  # the reason, in the last row of a trial stopped for good (a NaN loss)

# In a trial folder (ferbench.harness.train.test_artifacts, ferbench.harness.variants.pseudo_label.rounds).
TEST_PREDICTIONS_FILE = "test_predictions.npz"
TEST_PER_CLASS_FILE = "test_per_class.json"
SELECTED_WEIGHTS_FILE = "selected_weights.pt"  # train.select=best_val: the weights the test scores are of
TREE_NODES_FILE = "tree_nodes.json"  # tree:<name> arms: each node's groups, selected epoch and test scores
ROUNDS_FILE = "pseudo_label_rounds.json"  # pseudo_label variants: one record per round (0 = teacher)
ROUND_POOL_FILE = "pseudo_label_round{round}.npz"  # the pool predictions a round's pseudo-labels came from
CROSS_DATASET_FILE = "cross_dataset.json"  # eval.datasets: the tested model's scores on each extra test set


def experiment_paths(experiment_dir: Path) -> dict[str, Path]:
    meta = Path(experiment_dir) / FERBENCH_DIR
    return {
        "manifest": meta / "manifest.json",
        "spec": meta / "spec.yaml",
        "splits": meta / "splits.npz",
        "grid": meta / "grid.json",
        "samples": meta / "samples.npz",
        "cross_dataset": meta / "cross_dataset_mapping.json",
        "report": Path(experiment_dir) / "report",
    }


def is_experiment(path: Path) -> bool:
    return experiment_paths(path)["grid"].is_file()
