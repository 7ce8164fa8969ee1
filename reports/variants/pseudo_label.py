"""The report's pseudo-labelling section (Arsirii & Petrosiuk 2023): round by round, what was added,
how right the pseudo-labels were, how the student scored, which round is the arm's result (chosen on
validation) and every round against the paired baseline; tables, figures and Markdown.

Read from each pseudo_label trial's ``pseudo_label_rounds.json`` (written by the trial at the end
of every round), so a report of an interrupted study shows the rounds finished so far.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ferbench.harness.train.selection import ROUND_RULE
from ferbench.harness.variants.pseudo_label import uses_pseudo_label
from ferbench.harness.spec import StudySpec, TrainSpec, settings_label
from ferbench.harness.study.layout import ROUNDS_FILE
from ferbench.reports.collect import _trial_dir, arm_columns, arm_fields, collect, read_grid, read_rounds, try_read
from ferbench.reports.comparison import write_table
from ferbench.reports.context import ReportContext
from ferbench.reports.derived import axis_keys, fold_test_train_ratio, mcr_mofr, model_names
from ferbench.reports.escaping import md_code, md_text
from ferbench.reports.markdown import damaged_arms, damaged_lines, markdown_table
from ferbench.reports.stats import compare_paired, format_difference

ROUND_COLUMNS = ["round", "epoch", "selected_epoch", "train_size", "candidates", "confident", "images_added", "pseudo_labelled",
                 "added_precision", "pseudo_precision", "val_acc", "val_macro_f1", "test_acc", "test_macro_f1",
                 "test_weighted_f1"]
VERSUS_METRICS = {"test_acc": "test acc", "test_macro_f1": "test macro F1"}  # round − baseline, paired
SECTION_TITLE = "## Pseudo-labelling (Arsirii & Petrosiuk 2023)"
SELECTED = "selected"  # the round label of each seed's selected round in the vs-baseline table


def _stored_rounds(experiment_dir: Path):
    """(arm, its trial's pseudo_label_rounds.json) for every pseudo_label arm that wrote a readable one
    (a damaged one is named by ``ferbench.reports.collect.collect``'s ``damaged`` column)."""
    arms = read_grid(experiment_dir)
    arm_ids = [arm["arm_id"] for arm in arms]
    for arm in arms:
        if arm["status"] == "unavailable" or not uses_pseudo_label(arm["variant"]):
            continue
        trial_dir = _trial_dir(Path(experiment_dir), arm["arm_id"], arm_ids)
        path = trial_dir / ROUNDS_FILE if trial_dir else None
        stored = try_read(path, read_rounds)[0] if path is not None and path.is_file() else None
        if stored is not None:
            yield arm, stored


def collect_rounds(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rounds, per_class): one row per pseudo_label arm × round (per-class added counts as
    ``added_<class>``, the arm's stop reason on its last row), and one per arm × round × class."""
    rows, class_rows = [], []
    columns = arm_columns(read_grid(experiment_dir))[1:]  # the extra grid axes' values included
    for arm, stored in _stored_rounds(experiment_dir):
        fields = arm_fields(arm, [c for c in columns if c != "fold" or "fold" in arm])
        names = stored["class_names"]
        for position, record in enumerate(stored["rounds"]):
            last = position == len(stored["rounds"]) - 1
            stop = stored["stop_reason"] if last and stored["finished"] else ""
            rows.append({**fields, **{k: record.get(k) for k in ROUND_COLUMNS}, "selected": record["round"] == stored.get("selected_round"),
                         "finished": stored["finished"], "threshold": stored["settings"]["threshold"],
                         "pool": stored["settings"].get("unlabeled_path") or "held-out share of train", "pool_size": stored["pool_size"],
                         **{f"added_{name}": n for name, n in zip(names, record["added_per_class"])}, "stop_reason": stop})
            scores = record["test_per_class"]
            for i, name in enumerate(names):
                class_rows.append({**fields, "round": record["round"], "class": name, "added": record["added_per_class"][i],
                                   "pseudo_labelled": record["pseudo_per_class"][i],
                                   "pseudo_precision": record["pseudo_precision_per_class"][i],
                                   **{f"test_{k}": scores[k][i] for k in ("precision", "recall", "f1", "support")}})
    return pd.DataFrame(rows), pd.DataFrame(class_rows)


def round_confusion(experiment_dir: Path) -> tuple[dict[str, dict], pd.DataFrame]:
    """Each pseudo_label arm's test confusion matrix per round, shaped for
    ``ferbench.reports.confusion.plot_confusion_matrices``: one entry per arm × round, whose model name
    (``<backbone>_<init>_<variant>``, the extra-axis values and ``round r`` in the variant) pools the seeds of a round."""
    confusion, units = {}, []
    for arm, stored in _stored_rounds(experiment_dir):
        for record in stored["rounds"]:
            unit = f"{arm['arm_id']}@round{record['round']}"
            confusion[unit] = {"class_names": stored["class_names"], "matrix": record["test_confusion_matrix"]}
            settings = settings_label(arm.get("settings") or {})
            units.append({"arm_id": unit, "backbone": arm["backbone"], "init": arm["init"],
                          "variant": f"{arm['variant']}{'_' + settings if settings else ''} round {record['round']}"})
    return confusion, pd.DataFrame(units, columns=["arm_id", "backbone", "init", "variant"])


def round_mcr_mofr(epochs: pd.DataFrame, window: int) -> pd.DataFrame:
    """MCR / MOFR of every round of the pseudo_label arms, over ``round_epoch`` (0 = the round's
    evaluation before training), in the schema of ``mcr_mofr.csv`` plus ``round``."""
    if epochs.empty or "round" not in epochs:
        return pd.DataFrame()
    chosen = epochs[epochs["variant"].map(uses_pseudo_label)]
    blocks = [mcr_mofr(part.assign(epoch=part["round_epoch"]), window).assign(round=r) for r, part in chosen.groupby("round")]
    return pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()


def rounds_vs_baseline(rounds: pd.DataFrame, trials: pd.DataFrame, test_train_ratio: float | None = None) -> pd.DataFrame:
    """Per pseudo_label model and round, and for ``selected`` (each finished arm's selected round),
    the paired difference round − baseline of test accuracy and macro F1: pairs are the completed
    ``baseline`` arm of the same backbone, init, extra-axis values, seed (and fold), compared as every other difference
    (``ferbench.reports.stats.compare_paired``: the corrected resampled t over folds)."""
    axes = [axis for axis in axis_keys(rounds) if axis in trials.columns]
    columns = ["backbone", "init", "variant", *axes, "round", "metric", "n", "mean_diff", "ci_low", "ci_high", "p_value",
               "claim", "note", "cell"]
    if rounds.empty or trials.empty or not {"variant", "status", *VERSUS_METRICS} <= set(trials.columns):
        return pd.DataFrame(columns=columns)
    folds = "fold" in rounds and "fold" in trials
    keys = ["backbone", "init", *axes, "seed"] + (["fold"] if folds else [])
    baseline = trials[(trials["variant"] == "baseline") & (trials["status"] == "completed")]
    pairs = rounds.merge(baseline[keys + list(VERSUS_METRICS)], on=keys, suffixes=("", "_baseline"))
    pairs["round"] = pairs["round"].astype(int).astype(str)
    chosen = pairs[pairs["selected"].astype(bool) & pairs["finished"].astype(bool)].assign(round=SELECTED)
    rows = []
    group_keys = ["backbone", "init", "variant", *axes, "round"]
    groups = pd.concat([pairs, chosen], ignore_index=True).groupby(group_keys, sort=False, dropna=False)
    for values, part in groups:
        for metric in VERSUS_METRICS:
            a, b = part[metric].to_numpy(float), part[f"{metric}_baseline"].to_numpy(float)
            d = compare_paired(a, b, test_train_ratio if folds else None)
            rows.append({**dict(zip(group_keys, values)), "metric": metric,
                         "n": d.n, "mean_diff": d.mean_diff, "ci_low": d.ci_low, "ci_high": d.ci_high, "p_value": d.p_value,
                         "claim": d.claim, "note": d.note, "cell": format_difference(d)})
    return pd.DataFrame(rows, columns=columns)


def _versus_table(versus: pd.DataFrame) -> pd.DataFrame:
    frame = versus.assign(model=_model(versus), metric=versus["metric"].map(lambda m: f"{VERSUS_METRICS[m]} − baseline"))
    table = frame.pivot_table(index=["model", "round"], columns="metric", values="cell", aggfunc="first", sort=False)
    return table.reset_index().rename_axis(columns=None)


def _tested_text(train: TrainSpec) -> str:
    if train.select == "last":
        return "its last epoch, `train.select: last`"
    return (f"its epoch with the best {md_text(train.select_metric)}, `train.select: best_val`; the epoch is "
            "`selected_epoch` in `tables/pseudo_label_rounds.csv`")


def _model(frame: pd.DataFrame) -> pd.Series:
    return model_names(frame)


def draw_rounds(rounds: pd.DataFrame) -> Figure | None:
    """Test macro F1, pseudo-labelled images in the training set and their precision per round, one
    line per model, mean over seeds (precision is absent for an external pool without labels)."""
    if rounds.empty:
        return None
    frame = rounds.assign(model=_model(rounds))
    panels = {"test_macro_f1": "test macro F1", "pseudo_labelled": "pseudo-labelled images in train",
              "pseudo_precision": "precision of the pseudo-labels"}
    means = frame.groupby(["model", "round"], sort=False)[list(panels)].mean().reset_index()
    figure = Figure(figsize=(14, 3.8), layout="constrained")
    axes_row = figure.subplots(1, len(panels))
    for model, part in means.groupby("model", sort=False):
        for axes, column in zip(axes_row, panels):
            axes.plot(part["round"], part[column], marker="o", label=model)
    for axes, title in zip(axes_row, panels.values()):
        axes.set_xlabel("round (0 = teacher)")
        axes.set_title(title)
        axes.set_xticks(sorted(means["round"].unique()))
    axes_row[0].legend(fontsize=8)
    return figure


def draw_per_class(per_class: pd.DataFrame) -> Figure | None:
    """Per model (a row of panels): test F1 per class, teacher (round 0) vs each student, as grouped
    bars (the paper's Fig. 7), and the pseudo-labelled images per class and round, mean over seeds."""
    if per_class.empty:
        return None
    frame = per_class.assign(model=_model(per_class))
    models = list(dict.fromkeys(frame["model"]))
    classes = list(dict.fromkeys(frame["class"]))
    figure = Figure(figsize=(13, 3.6 * len(models)), layout="constrained")
    grid = figure.subplots(len(models), 2, squeeze=False)
    for (f1_axes, count_axes), model in zip(grid, models):
        part = frame[frame["model"] == model]
        rounds = sorted(part["round"].unique())
        width = 0.8 / len(rounds)
        for position, round_no in enumerate(rounds):
            means = part[part["round"] == round_no].groupby("class", sort=False)[["test_f1", "pseudo_labelled"]].mean().reindex(classes)
            offsets = [i + (position - (len(rounds) - 1) / 2) * width for i in range(len(classes))]
            label = "teacher" if round_no == 0 else f"student {round_no}"
            f1_axes.bar(offsets, means["test_f1"], width, label=label)
            count_axes.bar(offsets, means["pseudo_labelled"], width, label=label)
        for axes, title in ((f1_axes, "test F1 per class"), (count_axes, "pseudo-labelled images per class")):
            axes.set_xticks(range(len(classes)), classes, rotation=30)
            axes.set_title(f"{model}: {title}", fontsize=9)
        f1_axes.set_ylim(0, 1)
        f1_axes.legend(fontsize=8)
    return figure


def _added_text(row: pd.Series, names: list[str]) -> str:
    parts = [f"{name} {int(row[f'added_{name}'])}" for name in names if row.get(f"added_{name}", 0)]
    return ", ".join(parts) or "–"


def _round_table(rounds: pd.DataFrame) -> pd.DataFrame:
    names = [c.removeprefix("added_") for c in rounds.columns if c.startswith("added_") and c != "added_precision"]
    table = rounds.assign(model=rounds["arm_id"], chosen=rounds["selected"].map({True: "✓", False: ""}))
    table["added per class"] = [_added_text(row, names) for _, row in table.iterrows()]
    columns = {"model": "arm", "round": "round", "chosen": "selected", "images_added": "added", "added per class": "added per class",
               "pseudo_labelled": "pseudo-labelled in train", "added_precision": "precision of added",
               "pseudo_precision": "precision of all", "val_acc": "val acc", "val_macro_f1": "val macro F1",
               "test_acc": "test acc", "test_macro_f1": "test macro F1"}
    return table[list(columns)].rename(columns=columns)


def _pool_text(rounds: pd.DataFrame) -> str:
    pools = rounds.drop_duplicates("pool")
    if pools["pool"].tolist() == ["held-out share of train"]:
        return "a held-out share of train whose labels are hidden"
    described = [f"{int(row.pool_size):,} images from {md_code(row.pool)}" for row in pools.itertuples() if row.pool != "held-out share of train"]
    return f"external, without labels: {'; '.join(described)}"


def pseudo_label_section(experiment_dir: Path, epochs: pd.DataFrame, spec: StudySpec, report_dir: Path,
                         trials: pd.DataFrame | None = None) -> str:
    """Write ``tables/pseudo_label_rounds``, ``pseudo_label_per_class``, ``pseudo_label_mcr_mofr``,
    ``pseudo_label_vs_baseline`` and the figures; return the Markdown section ("" without pseudo_label
    arms). ``spec``: the study's (``ferbench.reports.collect.read_spec``), for the MCR/MOFR window, the
    split's fold correction and ``train.select``; ``trials`` (collected again when not given) holds the
    baseline arms' test metrics."""
    window, test_train_ratio = spec.report.window, fold_test_train_ratio(spec.split)
    rounds, per_class = collect_rounds(experiment_dir)
    trials = collect(experiment_dir)[1] if trials is None else trials
    damaged = damaged_lines(damaged_arms(trials, ROUNDS_FILE))
    if rounds.empty:  # no pseudo_label arm, none has finished a round, or every one's record is damaged
        return "\n".join([SECTION_TITLE, "", *damaged, ""]) if damaged else ""
    versus = rounds_vs_baseline(rounds, trials, test_train_ratio)
    tables = report_dir / "tables"
    write_table(tables, "pseudo_label_rounds", rounds)
    write_table(tables, "pseudo_label_vs_baseline", versus.drop(columns="cell"))
    write_table(tables, "pseudo_label_per_class", per_class)
    write_table(tables, "pseudo_label_mcr_mofr", round_mcr_mofr(epochs, window))
    from ferbench.reports.figures import _save

    for name, figure in (("pseudo_label_rounds", draw_rounds(rounds)), ("pseudo_label_per_class", draw_per_class(per_class))):
        if figure is not None:
            _save(figure, report_dir / "figures" / f"{name}.png")
    from ferbench.reports.confusion import plot_confusion_matrices

    plot_confusion_matrices(*round_confusion(experiment_dir), report_dir / "figures" / "pseudo_label_confusion.png")
    threshold = rounds["threshold"].iloc[0]
    stops = rounds[rounds["stop_reason"].astype(bool)]
    lines = [
        SECTION_TITLE, "",
        f"Round 0 is the teacher, trained on the labelled part of train. After each round the model predicts the "
        f"unlabeled pool ({_pool_text(rounds)}); every image predicted with probability "
        f"above {threshold} joins the training set with its predicted label, and the next round trains a student on the "
        "union. *added*: images new in the round's training set; *precision*: share of pseudo-labels equal to the "
        "hidden true label (of the added ones, and of all pseudo-labelled images in the round's training set; "
        "– where no true label exists). "
        f"Val/test scores are those of the weights the round tested ({_tested_text(spec.train)}). "
        f"**The arm's result is {ROUND_RULE}** (*selected* ✓; `pl_selected_round` in `trials.csv`, "
        "`pl_last_round` beside it): its test metrics are the arm's in every other table, and test scores never "
        "choose. Per-class counts, precision and test F1 per round are in "
        "`tables/pseudo_label_per_class.csv`, MCR/MOFR per round in `tables/pseudo_label_mcr_mofr.csv` "
        "(over each round's own epochs), each round's test confusion matrix in each trial's `pseudo_label_rounds.json` "
        "and below; "
        "the paired differences of the selected rounds are in the *variant vs baseline* table above.", "",
        markdown_table(_round_table(rounds)), *damaged, *([""] if damaged else []),
        "![Test macro F1, pseudo-labelled images and their precision per round](figures/pseudo_label_rounds.png)", "",
    ]
    for arm, (student_rounds, reason) in zip(stops["arm_id"], zip(stops["round"], stops["stop_reason"])):
        lines.append(f"- {md_code(arm)}: {int(student_rounds)} student round(s); stopped: {md_text(reason)}.")
    if not versus.empty:
        lines += ["", "Every round against the baseline arm of the same backbone, init, seed (and fold): the paired "
                  "difference round − baseline of the test metrics, with its 95% interval; the *selected* row pairs each "
                  "seed's selected round, as the *variant vs baseline* table does. `tables/pseudo_label_vs_baseline.csv`.", "",
                  markdown_table(_versus_table(versus), formatted=[f"{label} − baseline" for label in VERSUS_METRICS.values()])]
    if not per_class.empty:  # the paper's Fig. 7: teacher (round 0) vs students, per class
        frame = per_class.assign(model=_model(per_class))
        f1 = frame.pivot_table(index=["model", "round"], columns="class", values="test_f1", aggfunc="mean", sort=False)
        lines += ["", "Test F1 per class and round (mean over seeds):", "", markdown_table(f1.reset_index()),
                  "![Teacher vs student test F1 and pseudo-labelled images, per class](figures/pseudo_label_per_class.png)"]
    lines += ["", "![Test confusion matrices per round, rows normalised](figures/pseudo_label_confusion.png)", ""]
    return "\n".join(lines) + "\n"



def section(context: ReportContext) -> str:
    """The variant's report section (``VariantInfo.report_section``)."""
    return pseudo_label_section(context.experiment_dir, context.epochs, context.spec, context.report_dir, context.trials)
