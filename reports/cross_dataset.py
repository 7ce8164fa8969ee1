"""The report's cross-dataset evaluation (``eval.datasets``, after Moravčík 2021, §6.4): what each extra test
set is and how its labels were mapped into the training classes (with the mapping's confusion for mass-centre
mappings, as the thesis's Figs 6.10–6.13), and every model's accuracy and macro F1 on it.

Reads ``ferbench/cross_dataset_mapping.json`` (written by preflight) and each trial's ``cross_dataset.json``;
writes ``tables/cross_dataset.csv`` (one row per arm × extra test set). A file that cannot be read is named
where its part would be, and the rest of the section stands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ferbench.harness.study.checkpoints import trial_folder
from ferbench.harness.study.layout import CROSS_DATASET_FILE, experiment_paths
from ferbench.reports.collect import arm_artifacts, list_of, number_fields, read_cross_dataset, read_grid, relative, try_read
from ferbench.reports.comparison import write_table
from ferbench.reports.context import ReportContext
from ferbench.reports.derived import fold_test_train_ratio, model_names, seed_summary
from ferbench.reports.escaping import md_code
from ferbench.reports.markdown import damaged_lines, markdown_table, md_cell

TABLE = "cross_dataset"
SCORES = ("n_images", "n_dropped", "acc", "macro_f1")
METRICS = {"acc": "acc", "macro_f1": "macro F1"}  # a row's score → its column title in the results table
DROPPED = "dropped"


# --------------------------------------------------------------------------- reading


def read_mapping_record(path: Path) -> dict:
    """``ferbench/cross_dataset_mapping.json``, checked for what the section shows."""
    stored = json.loads(Path(path).read_text())
    try:
        columns = len(stored["training_classes"]) + 1
        for entry in stored["datasets"]:
            what = f"{entry['name']}: "
            rows = len(list_of(entry["class_counts"], len(entry["class_names"]), what + "class_counts"))
            number_fields(entry, ("images", "resized", "converted", "channels"), what)
            for fold in entry["folds"].values():
                for row in list_of(fold["confusion"], rows, what + "confusion"):
                    list_of(row, columns, what + "confusion")
                number_fields(fold["how"], ("dropped",), what)
                if not isinstance(fold["mass_centres"], dict):
                    raise ValueError(f"{what}mass_centres: expected an object")
    except TypeError as err:
        raise ValueError(str(err)) from None
    return stored


def collect_cross_dataset(experiment_dir: Path) -> pd.DataFrame:
    """One row per arm × extra test set: the arm's descriptor columns (as ``tables/per_class.csv`` has them),
    ``dataset``, the images scored and dropped, accuracy, macro F1 and ``f1_<class>`` per training class (empty
    for a class the set has no image of). Arms without a readable ``cross_dataset.json`` are left out."""
    columns, found = arm_artifacts(experiment_dir, CROSS_DATASET_FILE, read_cross_dataset)
    rows, classes = [], []
    for fields, stored in found:
        classes = classes or list(stored["class_names"])
        for record in stored["datasets"]:
            per_class = record.get("per_class") or {}
            f1 = {f"f1_{name}": (per_class["f1"][i] if per_class and per_class["support"][i] else np.nan)
                  for i, name in enumerate(stored["class_names"])}
            rows.append({**fields, "dataset": record["name"], "n_images": record["n_images"], "n_dropped": record["n_dropped"],
                         "acc": record["scalars"].get("acc", np.nan), "macro_f1": record["scalars"].get("macro_f1", np.nan), **f1})
    return pd.DataFrame(rows, columns=[*columns, "dataset", *SCORES, *(f"f1_{name}" for name in classes)])


def damaged_files(experiment_dir: Path) -> list[tuple[str, str]]:
    """(arm_id, path) of each trial's ``cross_dataset.json`` that exists but cannot be read."""
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    damaged = []
    for arm in arms:
        folder = trial_folder(Path(experiment_dir), arm["arm_id"], arm_ids) if arm["status"] != "unavailable" else None
        path = folder / CROSS_DATASET_FILE if folder is not None else None
        if path is not None and path.is_file() and try_read(path, read_cross_dataset)[0] is None:
            damaged.append((arm["arm_id"], relative(path, experiment_dir)))
    return damaged


# --------------------------------------------------------------------------- tables


def _cell(mean: float, low: float, high: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "–"
    return f"{mean:.3f}" + (f" [{low:.3f}, {high:.3f}]" if n >= 2 and not pd.isna(low) else " (n = 1)")


def results_table(rows: pd.DataFrame, test_train_ratio: float | None = None) -> pd.DataFrame:
    """Models × extra test sets: accuracy and macro F1, mean over seeds (and folds) with the 95% interval of the
    report's Across seeds table (Student t; over folds the corrected resampled one)."""
    datasets = list(dict.fromkeys(rows["dataset"]))
    arm = list(rows.columns[:rows.columns.get_loc("dataset")])  # the arm's descriptor columns
    wide = rows.drop_duplicates("arm_id")[arm].set_index("arm_id")
    for dataset in datasets:
        scored = rows[rows["dataset"] == dataset].set_index("arm_id")
        for metric, title in METRICS.items():
            wide[f"{dataset} {title}"] = pd.to_numeric(scored[metric], errors="coerce")
    wide = wide.reset_index()
    names = [f"{dataset} {METRICS[metric]}" for dataset in datasets for metric in METRICS]
    summary = seed_summary(wide, names, test_train_ratio)
    summary["model"] = model_names(summary)
    summary["cell"] = [_cell(r.mean, r.ci95_low, r.ci95_high, int(r.n)) for r in summary.itertuples()]
    table = summary.pivot(index="model", columns="metric", values="cell").reindex(index=list(dict.fromkeys(summary["model"])))
    table.insert(0, "seeds", summary.groupby("model", sort=False)["n"].max())
    return table[["seeds", *names]].rename_axis(columns=None).reset_index()


def mapping_table(entry: dict, training: list[str], fold: str) -> pd.DataFrame:
    """The mapping's confusion in fold ``fold``: the set's classes (rows) × the training class each image was
    given, and the dropped images."""
    matrix = pd.DataFrame(entry["folds"][fold]["confusion"], columns=[*training, DROPPED])
    if not matrix[DROPPED].any():
        matrix = matrix.drop(columns=DROPPED)
    matrix.insert(0, "label", entry["class_names"])
    return matrix


# --------------------------------------------------------------------------- the section


def _classes_text(names: list[str], counts: list[int]) -> str:
    return ", ".join(f"{md_cell(name)} {count}" for name, count in zip(names, counts))


def _label_lines(entry: dict, training: list[str]) -> list[str]:
    """How the set's classes count, in words, with the images each way."""
    counts = dict(zip(entry["class_names"], entry["class_counts"]))
    mapped = {name: target for name, target in entry["map"].items() if name in counts}
    named = [n for n in entry["class_names"] if n in training and n not in mapped]
    unmapped = [n for n in entry["class_names"] if n not in named and n not in mapped]
    centre = entry.get("mass_centre") or {}
    if centre.get("remap") == "all":
        return [f"- Labels: every image re-labelled by its nearest mass centre ({centre['distance']} difference); its own "
                "labels are only the rows of the mapping below (the thesis's Fig. 6.10)."]

    def listed(names: list[str]) -> str:
        return ", ".join(md_cell(n) for n in names) + f" ({sum(counts[n] for n in names)} images)"

    lines = [f"- Labels kept by name: {listed(named) if named else 'none'}"]
    if mapped:
        lines.append("- Mapped (`map`): " + ", ".join(f"{md_cell(n)} → {md_cell(t)} ({counts[n]} images)" for n, t in mapped.items()))
    if unmapped:
        fate = (f"each given the class of its nearest mass centre ({centre.get('distance')} difference)"
                if entry["unmapped"] == "mass_centre" else "dropped, not scored")
        lines.append(f"- No training class: {listed(unmapped)}: {fate}")
    return lines


def _centre_text(entry: dict, fold: str) -> str:
    centres = entry["folds"][fold]["mass_centres"]
    return ", ".join(f"{md_cell(name)} {md_code(Path(c['source']).name) if c.get('source') else '#' + str(c['index'])}"
                     for name, c in centres.items())


def _dataset_lines(entry: dict, training: list[str]) -> list[str]:
    """One extra test set: what it is, its labels' mapping in words, and (mass centres) the mapping's confusion."""
    folds = list(entry["folds"])
    first = folds[0] if folds else None
    size = "×".join(map(str, entry["image_size"]))
    form = f"{'×'.join(map(str, entry['resized_to']))} {entry['converted_to']}"
    lines = [f"### {md_cell(entry['name'])}", "",
             f"- Data: format {md_cell(entry['format'])}, {md_cell(entry['source'])}: {entry['images']} images {size}, "
             f"{entry['channels']} channel(s), brought to the training data's {form} ({entry['resized']} resized, "
             f"{entry['converted']} converted); classes {_classes_text(entry['class_names'], entry['class_counts'])}",
             *_label_lines(entry, training)]
    if first is not None:
        how = entry["folds"][first]["how"]
        scored = sum(how.values()) - how["dropped"]
        fold_note = f" (fold {first}; every fold's in the mapping file)" if len(folds) > 1 else ""
        lines.append(f"- Scored: {scored} images, dropped {how['dropped']}"
                     + (f", {how['mass_centre']} of them labelled by mass centre{fold_note}" if how.get("mass_centre") else ""))
    if entry.get("mass_centre") and first is not None:
        centre = entry["mass_centre"]
        lines += [f"- Mass centres{' of fold ' + first if len(folds) > 1 else ''}: {_centre_text(entry, first)}. Each is "
                  "the training image of its class with the lowest total difference to every other training image of "
                  f"the class (among at most {centre['max_images']} per class, sampled with seed {entry['sample_seed']}; "
                  "training part only, never validation or test).", "",
                  f"Mapping{' in fold ' + first if len(folds) > 1 else ''}: rows this set's labels, columns the training "
                  "class each image was given (the thesis's Figs 6.10–6.13):", "",
                  markdown_table(mapping_table(entry, training, first))]
    return [*lines, ""]


def cross_dataset_section(context: ReportContext) -> str:
    """Write ``tables/cross_dataset.csv``; the Markdown section "Cross-dataset evaluation"."""
    experiment_dir = context.experiment_dir
    rows = collect_cross_dataset(experiment_dir)
    write_table(context.report_dir / "tables", TABLE, rows)
    record_path = experiment_paths(experiment_dir)["cross_dataset"]
    record, problem = try_read(record_path, read_mapping_record) if record_path.is_file() else (None, "missing")
    lines = ["## Cross-dataset evaluation", "",
             "Each arm's tested model (the weights its test metrics are of) also predicted the images of the datasets "
             "below, unchanged (Moravčík 2021, §6.4): each image brought to the training data's size and channels, and "
             "counted with the training class its label maps to. Accuracy and macro F1 are over the images scored "
             "(macro F1 as on the test split: the mean F1 over the training classes the set holds or the model "
             "predicts). Every arm with per-class F1 is in `tables/cross_dataset.csv`; every image's mapped label, "
             "per fold, in `ferbench/cross_dataset_mapping.json`.", ""]
    if record is None:
        lines += [f"- damaged: {md_cell(relative(record_path, experiment_dir))} ({md_cell(problem)})", ""]
    else:
        for entry in record["datasets"]:
            lines += _dataset_lines(entry, list(record["training_classes"]))
    lines += ["### Results", ""]
    if rows.empty:
        lines += ["No arm has been scored on them yet.", ""]
    else:
        unit = "seeds × folds" if "fold" in rows.columns and rows["fold"].nunique() > 1 else "seeds"
        table = results_table(rows, fold_test_train_ratio(context.spec.split))
        lines += [f"Mean over {unit} [95% interval, as in Across seeds; none below 2 {unit}]:", "",
                  markdown_table(table, formatted=[c for c in table.columns if c not in ("model", "seeds")])]
    damaged = damaged_lines(damaged_files(experiment_dir))
    return "\n".join([*lines, *damaged, *([""] if damaged else [])])

