"""The report's part on decision trees of CNNs (``tree:<name>`` arms; the Moravčík thesis, §5.3 and Table 6.6).

Per node: its groups, its network and settings, its validation accuracy and its test accuracy on its own classes'
test images, and its confusion over its groups (``tables/tree_nodes.csv``). Per tree: the classification report of
the routed tree (per-class precision, recall, F1 and support, the thesis's Table 6.6), its confusion matrix, and its
paired comparison with each single network trained on the same data with the same init and variant
(``tables/tree_vs_networks.csv``): a difference is claimed only where the paired interval over seeds excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ferbench.harness.study.layout import TREE_NODES_FILE
from ferbench.harness.tree_spec import TreeSpec, is_tree, tree_name
from ferbench.reports.collect import TREE_ROW, arm_artifacts, collect_per_class, read_tree_nodes
from ferbench.reports.comparison import write_table
from ferbench.reports.context import ReportContext
from ferbench.reports.derived import axis_keys, completed_trials, difference_fields, fold_test_train_ratio, model_names, unit_pairs
from ferbench.reports.escaping import md_code
from ferbench.reports.figures import _finish, _light, _style
from ferbench.reports.markdown import damaged_arms, damaged_lines, markdown_table
from ferbench.reports.stats import compare_paired, format_difference

NODE_COLUMNS = ["node", "groups", "node_backbone", "node_variant", "selected_epoch", "train_size", "test_size",
                "val_acc", "test_acc", "test_macro_f1"]
NODE_FIGURE = "tree_nodes.png"
COMPARED = {"test_acc": "test acc", "test_macro_f1": "test macro F1"}


def collect_tree_nodes(experiment_dir: Path) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """(one row per tree arm × node, each tree arm's node records with their confusion matrices)."""
    columns, found = arm_artifacts(experiment_dir, TREE_NODES_FILE, read_tree_nodes)
    rows, records = [], {}
    for fields, record in found:
        records[fields["arm_id"]] = record["nodes"]
        for node in record["nodes"]:
            rows.append({**fields, "node": node["name"], "groups": " | ".join("+".join(g) for g in node["groups"]),
                         "node_backbone": node["backbone"], "node_variant": node.get("variant"),
                         "selected_epoch": node.get("selected_epoch"), "train_size": node.get("train_size"),
                         "test_size": node.get("test_size"), "val_acc": node["val_acc"],
                         "test_acc": node["test"].get("acc"), "test_macro_f1": node["test"].get("macro_f1")})
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*columns, *NODE_COLUMNS])), records


def tree_vs_networks(trials: pd.DataFrame, test_train_ratio: float | None = None) -> pd.DataFrame:
    """Paired differences tree − single network, per tree model × network model of the same init, variant and extra
    axis values, for ``COMPARED``, pairing completed trials by seed (and fold)."""
    units = [k for k in ("seed", "fold") if k in trials.columns]
    keys = ["init", "variant", *axis_keys(trials)]
    rows = []
    for values, arms in trials.groupby(keys, sort=False, dropna=False):
        cell = completed_trials(arms)
        trees = [b for b in dict.fromkeys(arms["backbone"]) if is_tree(b)]
        networks = [b for b in dict.fromkeys(arms["backbone"]) if not is_tree(b)]
        for tree in trees:
            for network in networks:
                for metric in COMPARED:
                    if metric not in cell:
                        continue
                    a, b, unpaired = unit_pairs(cell, units, cell["backbone"] == tree, cell["backbone"] == network, metric)
                    d = compare_paired(a, b, test_train_ratio)
                    rows.append({"tree": tree, "network": network, **dict(zip(keys, values)), "metric": metric,
                                 "tree_mean": float(np.mean(a)) if len(a) else np.nan,
                                 "network_mean": float(np.mean(b)) if len(b) else np.nan,
                                 "n_unpaired": unpaired, **difference_fields(d), "difference": format_difference(d)})
    return pd.DataFrame(rows)


def draw_node_curves(epochs: pd.DataFrame) -> Figure | None:
    """Per tree model (a row of panels) and node (a panel): train and validation accuracy over the node's epochs,
    mean over seeds (and folds)."""
    rows = epochs[epochs["node"].notna() & (epochs["node"] != TREE_ROW)] if "node" in epochs else epochs.iloc[0:0]
    if rows.empty:
        return None
    rows = rows.assign(model=model_names(rows).to_numpy())
    models = list(dict.fromkeys(rows["model"]))
    width = max(rows.groupby("model")["node"].nunique())
    with _style():
        figure = Figure(figsize=(3.2 * width, 2.6 * len(models) + 0.6), layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.subplots(len(models), width, squeeze=False, sharey=True)
        for r, model in enumerate(models):
            mine = rows[rows["model"] == model]
            nodes = list(dict.fromkeys(mine["node"]))
            for c in range(width):
                axes = grid[r][c]
                if c >= len(nodes):
                    axes.axis("off")
                    continue
                curve = mine[mine["node"] == nodes[c]].groupby("round_epoch")[["train_acc", "val_acc"]].mean()
                axes.plot(curve.index, curve["train_acc"], color=_light("C0"), marker="o", label="train")
                axes.plot(curve.index, curve["val_acc"], color="C0", marker="o", label="validation")
                axes.set_title(f"{model}: {nodes[c]}", fontsize=9)
                axes.set_xlabel("node epoch")
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
                if c == 0:
                    axes.set_ylabel("accuracy")
        grid[0][0].legend(fontsize=8)
        figure.suptitle("Tree nodes: accuracy over each node's epochs")
    return figure


def _tree_text(name: str, tree: TreeSpec) -> list[str]:
    layout = tree.layout()
    lines = [f"**{md_code('tree:' + name)}**" + (f": {tree.description}" if tree.description else "") +
             f" Routing: {tree.routing} ({'each image follows its most probable group at every node' if tree.routing == 'hard' else 'the product of the group probabilities along each class path'}).", ""]
    for node in tree.nodes:
        settings = "; ".join(f"{section} {md_code(json.dumps(getattr(node, section), sort_keys=True))}"
                             for section in ("model", "train") if getattr(node, section))
        root = " (root)" if node.name == layout.root else ""
        lines.append(f"- {md_code(node.name)}{root}: {' | '.join('+'.join(g) for g in node.groups)} — {md_code(node.backbone)}"
                     + (f", variant {md_code(node.variant)}" if node.variant else "") + (f"; {settings}" if settings else ""))
    return lines


def _confusion_table(names: list[str], matrix: np.ndarray) -> str:
    frame = pd.DataFrame(matrix.astype(int), columns=[f"→ {n}" for n in names])
    frame.insert(0, "true", names)
    return markdown_table(frame)


def _classification_report(per_class: pd.DataFrame, confusion: dict[str, dict], arm_ids: list[str]) -> str:
    """Table 6.6 of the thesis for one tree model: per-class scores averaged over its seeds, then accuracy and the macro
    and weighted averages, from the summed confusion matrix of those seeds."""
    rows = per_class[per_class["arm_id"].isin(arm_ids)]
    table = rows.groupby("class", sort=False)[["precision", "recall", "f1", "support"]].mean().reset_index()
    table["support"] = table["support"].round().astype(int)
    matrices = [np.asarray(confusion[a]["matrix"], dtype=float) for a in arm_ids if a in confusion]
    if table.empty or not matrices:
        return ""
    total = sum(matrices)
    support = table["support"].to_numpy(dtype=float)
    summary = pd.DataFrame([
        {"class": "accuracy", "precision": np.nan, "recall": np.nan, "f1": np.trace(total) / total.sum(), "support": int(support.sum())},
        {"class": "macro avg", **{k: table[k].mean() for k in ("precision", "recall", "f1")}, "support": int(support.sum())},
        {"class": "weighted avg", **{k: np.average(table[k], weights=support) if support.sum() else np.nan
                                     for k in ("precision", "recall", "f1")}, "support": int(support.sum())},
    ])
    names = confusion[next(a for a in arm_ids if a in confusion)]["class_names"]
    seeds = f" (mean over {len(matrices)} seeds; confusion summed)" if len(matrices) > 1 else ""
    return "\n".join([f"Classification report{seeds}:", "", markdown_table(pd.concat([table, summary], ignore_index=True)),
                      "", "Confusion matrix (rows true, columns predicted):", "", _confusion_table(names, total)])


def tree_section(context: ReportContext) -> str:
    """The ``## Decision trees of CNNs`` section; "" when the study has no tree arm."""
    trials = context.trials
    if trials.empty or not trials["backbone"].map(is_tree).any():
        return ""
    tables = context.report_dir / "tables"
    nodes, records = collect_tree_nodes(context.experiment_dir)
    write_table(tables, "tree_nodes", nodes)
    comparison = tree_vs_networks(trials, fold_test_train_ratio(context.spec.split))
    write_table(tables, "tree_vs_networks", comparison)
    lines = ["## Decision trees of CNNs", ""]
    for name in dict.fromkeys(tree_name(b) for b in trials["backbone"] if is_tree(b)):
        if name in context.spec.trees:
            lines += [*_tree_text(name, context.spec.trees[name]), ""]
    lines += damaged_lines(damaged_arms(trials[trials["backbone"].map(is_tree)], TREE_NODES_FILE))
    if nodes.empty:
        return "\n".join([*lines, "No tree arm has finished yet.", ""])
    nodes = nodes.assign(model=model_names(nodes).to_numpy())
    per_node = nodes.groupby(["model", "node", "groups"], sort=False).agg(
        n=("val_acc", "size"), val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean"),
        test_macro_f1=("test_macro_f1", "mean"), test_images=("test_size", "max")).reset_index()
    _finish(draw_node_curves(context.epochs), context.report_dir / "figures" / NODE_FIGURE, "Tree nodes", "no node epochs")
    lines += ["### Nodes", "", f"![Tree nodes](figures/{NODE_FIGURE})", "",
              "Each node's validation accuracy (its selected epoch) and its test accuracy on the test images of its own "
              "classes, mean over seeds (`tables/tree_nodes.csv`):", "", markdown_table(per_node), ""]
    per_class, confusion = collect_per_class(context.experiment_dir)
    for model, arms in nodes.groupby("model", sort=False):
        arm_ids = list(dict.fromkeys(arms["arm_id"]))
        lines += [f"### {md_code(model)}", ""]
        for node in dict.fromkeys(arms["node"]):
            kept = [n for a in arm_ids for n in records.get(a, []) if n["name"] == node]
            total = sum(np.asarray(n["test"]["confusion_matrix"], dtype=float) for n in kept)
            groups = ["+".join(g) for g in kept[0]["groups"]]
            lines += [f"Node {md_code(node)}: confusion over its groups on its test images"
                      + (f", summed over {len(kept)} seeds" if len(kept) > 1 else "") + ":", "",
                      _confusion_table(groups, total), ""]
        report = _classification_report(per_class, confusion, arm_ids)
        if report:
            lines += ["The routed tree on the whole test split:", "", report, ""]
    if not comparison.empty:
        shown = comparison.assign(metric=comparison["metric"].map(COMPARED))
        lines += ["### The tree against single networks", "",
                  "Tree − network on the same data, init and variant, paired by seed (`tables/tree_vs_networks.csv`); "
                  "a difference is claimed only where its 95% interval excludes 0:", "",
                  markdown_table(shown[["tree", "network", "init", "variant", "metric", "tree_mean", "network_mean",
                                        "difference"]], formatted=["difference"]), ""]
    return "\n".join(lines)
