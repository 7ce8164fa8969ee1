"""Render the study report as Markdown: grid, arm statuses, final metrics, split class counts.

Every string that comes from a user (study and run names, backbone and class names, file paths, error
messages, the dataset's name) goes through ``ferbench.reports.escaping`` or ``md_cell``: report.md is also
rendered to report.html, where a name such as ``[r](javascript:alert(1))`` must stay text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import pandas as pd

from ferbench.harness.data.dataset import UNLABELLED_CLASS
from ferbench.harness.data.splits import subject_mixing_text
from ferbench.harness.spec import FreezeSpec, ModelSpec, SplitSpec, StudySpec, setting_text
from ferbench.harness.tasks import get_task_info
from ferbench.reports.escaping import md_code, md_text

STATUS_ORDER = ["completed", "failed", "incomplete", "unavailable"]


def _folds_run(split: SplitSpec) -> str:
    return str(split.folds) if split.folds is not None else f"all {split.k}"


def split_text(split: SplitSpec, dataset_name: str = "", subjects: int | None = None) -> str:
    """The Split line; with the dataset's ``subjects`` count, a split that ignores them says so, since
    its numbers compare only with results under the same protocol."""
    kind = split.kind
    if kind == "official":
        text = f"the dataset's official split (FER2013: test = {split.test}, val = the other test part; " \
               f"otherwise val = {split.val_fraction} of train)"
    elif kind == "subject_kfold":
        text = f"subject-exclusive {split.k}-fold (folds run: {_folds_run(split)}), val = {split.val_fraction} of the training subjects"
    elif kind == "stratified_kfold":
        text = f"stratified {split.k}-fold (folds run: {_folds_run(split)}), val = {split.val_fraction} of each fold's training images"
    else:
        text = f"stratified train/val/test {list(split.ratios)}"
    if split.unlabeled_fraction:
        text += f"; {split.unlabeled_fraction} of train held out as unlabeled"
    mixing = subject_mixing_text(split, dataset_name, subjects)
    return f"{text} (seed {split.seed})" + (f". **{mixing[0].upper()}{mixing[1:]}.**" if mixing else "")


def _subjects(manifest: dict) -> int | None:
    """The dataset's distinct subjects as the manifest's data summary records them (None: unknown, or a
    manifest from before the summary)."""
    summary = manifest.get("data_summary")
    subjects = summary.get("subjects") if isinstance(summary, dict) else None
    return subjects if isinstance(subjects, int) else None


def _freezing(freeze: FreezeSpec) -> str:
    policy = freeze.policy
    if policy == "last_k":
        return f"last_k (k={freeze.k})"
    if policy == "keras_last_k":
        return f"keras_last_k (the last {freeze.k} Keras layers after excluding the last one)"
    if policy == "two_stage":
        what = "everything" if freeze.unfreeze_k is None else f"the last {freeze.unfreeze_k} trunk layers"
        when = (f"at epoch {freeze.unfreeze_epoch}" if freeze.unfreeze_on == "epoch" else
                f"after {freeze.patience} head epoch(s) without a lower val_loss, at the latest at epoch {freeze.unfreeze_epoch}")
        return f"two_stage (fine-tune {what} {when}, lr × {freeze.unfreeze_lr_factor})"
    return policy


def _task_text(spec: StudySpec) -> str:
    """The loss and, for a multi-label task, the decision thresholds (classification: cross-entropy, as always)."""
    if spec.task != "multilabel":
        return ""
    loss = "bce" if spec.train.loss == "auto" else spec.train.loss
    threshold = spec.multilabel.threshold
    rule = "chosen per label on validation (max F1)" if threshold == "val_f1" else f"{threshold}"
    return f", task multilabel, loss {loss}, thresholds {rule}"


def _model_options(model: ModelSpec) -> str:
    """The backbones' endings where they differ from deepface's and timm's today (the defaults)."""
    parts = []
    if model.vggface_descriptor != "fc7":
        parts.append(f"VGG-Face descriptor {model.vggface_descriptor}")
    if not model.openface_l2_norm:
        parts.append("OpenFace without L2 normalisation")
    if model.resnet_mobilenet_final_relu == "drop":
        parts.append("ResNet-50 and MobileNet without their last ReLU")
    return "".join(f", {part}" for part in parts)


# What starts inline markup inside a line: code, emphasis (``_`` only at a word's edge), links and
# images (``[``), a table's cell border; ``<`` and ``&`` (raw HTML, autolinks, entities) become entities.
_CELL_SPECIALS = re.compile(r"[\\`*\[\]|]|(?<!\w)_|_(?!\w)")


def md_cell(value: object) -> str:
    """``value`` as literal text anywhere but at the start of a line (a table cell, after a label).

    Why not ``md_text``: it escapes every character Markdown reads at a line's start too (``-``, ``.``,
    ``(``, ``#``), so ``6 (14.3%)`` or ``small_cnn_s0`` would read ``6 \\(14\\.3%\\)``, ``small\\_cnn\\_s0``
    in report.md; inside a line only the characters that open inline markup matter.
    """
    text = " ".join(str(value).splitlines()).replace("&", "&amp;").replace("<", "&lt;")
    return _CELL_SPECIALS.sub(lambda match: "\\" + match.group(), text)


def _fmt(value, digits: int = 3, formatted: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|") if formatted else md_cell(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3, formatted: Iterable[str] = ()) -> str:
    """A pipe table of ``frame``: floats to ``digits`` places, missing values as "–", headers and text
    cells escaped (``md_cell``: names come from users). ``formatted``: columns whose text this package
    wrote as Markdown (numbers with intervals, bold verdicts) and that hold no user text; kept as written."""
    if frame.empty:
        return "_none_\n"
    keep = [column in set(formatted) for column in frame.columns]
    header = "| " + " | ".join(md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v, digits, k) for v, k in zip(row, keep)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def damaged_arms(trials: pd.DataFrame, file_name: str) -> list[tuple[str, str]]:
    """(arm_id, path) of every arm whose ``file_name`` could not be read (``trials.damaged``, see
    ``ferbench.reports.collect``), for the one-line note a section shows where that arm would be."""
    if trials is None or "damaged" not in trials:
        return []
    return [(arm, path) for arm, listed in zip(trials["arm_id"], trials["damaged"].fillna(""))
            for path in str(listed).split("; ") if path and path.rsplit("/", 1)[-1] == file_name]


def damaged_lines(entries: list[tuple[str, str]]) -> list[str]:
    """The notes of ``damaged_arms``: ``- `arm`: damaged: PATH`` (the rest of the section is intact)."""
    return [f"- {md_code(arm)}: damaged: {md_cell(path)}" for arm, path in entries]


def _arms_table(trials: pd.DataFrame) -> pd.DataFrame:
    columns = {
        "arm_id": "arm", "status": "status", "weights_source": "weights", "epochs_done": "epochs", "input_size": "input",
        "final_val_acc": "val acc", "best_val_acc": "best val acc", "best_epoch": "best epoch",
        "test_acc": "test acc", "test_macro_f1": "test macro F1", "train_images_per_s": "train img/s",
        "train_time_s": "train s",
    }
    table = trials.reindex(columns=list(columns))
    for column in ("train_images_per_s", "train_time_s"):
        table[column] = table[column].round(0).astype("Int64")
    damaged = trials["damaged"].fillna("") if "damaged" in trials else pd.Series("", index=trials.index)
    if damaged.astype(bool).any():  # an arm with a file that could not be read: the rest of it is shown
        table["notes"] = ["damaged: " + d if d else "" for d in damaged]
    return table.rename(columns=columns)


def _partial_banner(manifest: dict, counts: pd.Series) -> list[str]:
    """A study still running or interrupted: say so before any number is read."""
    unfinished = int(counts.get("incomplete", 0))
    if not unfinished:
        return []
    resume = md_code(f"ferbench run {manifest['study']} --resume")
    return [f"> **Partial results**: {unfinished} of {int(counts.sum())} arms have not finished (still running, "
            f"or interrupted: {resume} continues it). Tables and figures show "
            "only the epochs recorded so far; statistics count completed arms only.", ""]


def _spec_notes(notes: Sequence[str]) -> list[str]:
    """What reading a stored spec of an earlier version changed (``ferbench.reports.spec_view``), or nothing."""
    if not notes:
        return []
    return [f"- Stored spec: written by another version of FERBench; read with {len(notes)} change(s): "
            + "; ".join(md_cell(note) for note in notes)]


def render_markdown(
    manifest: dict, spec: StudySpec, trials: pd.DataFrame, data_section: str | None = None,
    sections: list[str] | None = None, spec_notes: Sequence[str] = (),
) -> str:
    """report.md: ``manifest`` (dataset, versions, hardware), the study's settings from ``spec`` (the
    manifest's, read by ``ferbench.reports.collect.read_spec``, whose ``notes`` are ``spec_notes``),
    the arms in ``trials``, then ``sections`` and the data section."""
    dataset = manifest["dataset"]
    grid, train = spec.grid, spec.train
    hardware = manifest["hardware"]
    counts = trials["status"].value_counts()
    status_line = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts)
    lines = [
        f"# FERBench report — {md_text(manifest['study'])} ({md_text(manifest['experiment'])})",
        "",
        f"Created {md_cell(manifest['created'])}. {len(trials)} arms: {status_line}.",
        "",
        *_partial_banner(manifest, counts),
        "## Study",
        "",
        f"- Dataset: **{md_text(dataset['name'])}**, {dataset['images']} images "
        f"{dataset['image_size'][0]}×{dataset['image_size'][1]}, {dataset['channels']} channel(s), "
        + (f"classes {', '.join(md_text(name) for name in dataset['class_names'])}"
           if list(dataset["class_names"]) != [UNLABELLED_CLASS] else "no emotion labels (multi-label targets only)"),
        f"- Split: {split_text(spec.split, dataset['name'], _subjects(manifest))}",
        f"- Grid: backbone {md_cell(grid.backbone)} × init {md_cell(grid.init)} × variant "
        f"{md_cell(grid.variant)}"
        + "".join(f" × {md_cell(path)} {md_cell('[' + ', '.join(map(setting_text, values)) + ']')}"
                  for path, values in grid.axes.items())
        + f" × seed {md_cell(grid.seed)}"
        + (f", excluding {md_cell(grid.exclude)}" if grid.exclude else "")
        + (" (each arm trains with its own value of the extra axes, which replaces the setting below)" if grid.axes else ""),
        f"- Training: {train.epochs} epochs, {train.optimizer} lr {train.lr}, "
        f"batch {train.batch_size}, input size {train.input_size}, "
        f"augmentation {'on' if train.augment.enabled else 'off'}, "
        f"head {train.head}, freezing {_freezing(train.freeze)}, "
        f"random init {train.random_init}{_model_options(spec.model)}{_task_text(spec)}",
        f"- Resources per trial: {spec.resources.cpu} CPU, {spec.resources.gpu} GPU",
        *_spec_notes(spec_notes),
        "",
        "## Arms",
        "",
        markdown_table(_arms_table(trials)),
        "Accuracy and loss are on the validation split after the last epoch; test metrics on the test "
        "split with the model `train.select` picks (the last epoch, or the best on validation), and for a "
        "pseudo_label arm with the round chosen on validation; `train img/s` is the mean training throughput over epochs; `weights` is "
        "where a pretrained arm's weights came from (`synth-identity`: identity pretraining on a separate "
        "SynthFER set, see the README).",
        "",
    ]
    problems = trials[trials["status"].isin(["failed", "unavailable", "incomplete"])]
    if not problems.empty:
        lines += ["## Arms that did not complete", ""]
        reasons: dict[tuple[str, str], list[str]] = {}  # (status, reason) → arms
        for row in problems.itertuples(index=False):
            reason = row.error or ("interrupted; run again with --resume to finish it" if row.status == "incomplete" else "")
            reasons.setdefault((row.status, reason), []).append(md_code(row.arm_id))
        for (status, reason), arms in reasons.items():
            lines.append(f"- {', '.join(arms)} — **{status}**: {md_text(reason)}")
        lines.append("")
    lines += [section.rstrip() + "\n" for section in sections or []]
    if data_section is not None:
        lines += [data_section.rstrip(), ""]
    else:
        split_counts = pd.DataFrame(manifest["split_class_counts"]).rename_axis("class").reset_index()
        split_counts.loc[len(split_counts)] = ["total", *split_counts.iloc[:, 1:].sum().tolist()]
        lines += ["## Class counts per split", "", markdown_table(split_counts)]
    lines += [
        "## Metrics",
        "",
        "- `train_acc` / `train_loss`: running average over the epoch's batches (as Keras reports it); "
        "epoch 0 is a clean pass of the untrained model.",
        "- `val_*`: evaluation pass on the validation split after each epoch.",
        *get_task_info(spec.task).metrics_text.split("\n"),
        "",
        "## Reproducibility",
        "",
        f"- Dataset fingerprint (SHA-256 of pixels and labels): {md_code(dataset['fingerprint_sha256'])}",
        f"- Git commit: {md_code(manifest.get('git_commit') or 'unknown')}",
        "- Versions: " + ", ".join(f"{md_cell(k)} {md_cell(v)}" for k, v in manifest["versions"].items()),
        f"- Hardware: {md_cell(hardware.get('processor'))}, {md_cell(hardware.get('cpu_count'))} CPUs, "
        f"{md_cell(hardware.get('memory_gb', '?'))} GiB, GPUs: {md_cell(hardware.get('cuda_devices') or 'none')}",
        "- Tables (CSV and Parquet): `tables/epochs.csv` (one row per trial × epoch), `tables/trials.csv` (one row "
        "per arm), `tables/mcr_mofr.csv`, `tables/summary.csv` (per model and metric across seeds), "
        "`tables/differences.csv` (paired comparisons), `tables/per_class.csv`.",
        "",
    ]
    return "\n".join(lines)
