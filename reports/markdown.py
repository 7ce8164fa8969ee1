"""Render the study report as Markdown: grid, arm statuses, final metrics, split class counts."""

from __future__ import annotations

import math

import pandas as pd

STATUS_ORDER = ["completed", "failed", "incomplete", "unavailable"]


def split_text(split: dict) -> str:
    kind = split.get("kind", "stratified")
    if kind == "official":
        text = f"the dataset's official split (FER2013: test = {split['test']}, val = the other test part; " \
               f"otherwise val = {split['val_fraction']} of train)"
    elif kind == "subject_kfold":
        folds = split["folds"] if split.get("folds") is not None else f"all {split['k']}"
        text = f"subject-exclusive {split['k']}-fold (folds run: {folds}), val = {split['val_fraction']} of the training subjects"
    else:
        text = f"stratified train/val/test {split['ratios']}"
    if split.get("unlabeled_fraction"):
        text += f"; {split['unlabeled_fraction']} of train held out as unlabeled"
    return f"{text} (seed {split['seed']})"


def _freezing(freeze: dict) -> str:
    policy = freeze.get("policy", "none")
    if policy == "last_k":
        return f"last_k (k={freeze.get('k')})"
    if policy == "keras_last_k":
        return f"keras_last_k (the last {freeze.get('k')} Keras layers after excluding the last one)"
    if policy == "two_stage":
        return f"two_stage (unfreeze at epoch {freeze.get('unfreeze_epoch')}, lr × {freeze.get('unfreeze_lr_factor')})"
    return policy


def _model_options(model: dict) -> str:
    """The backbones' endings where they differ from deepface's and timm's today (the defaults)."""
    parts = []
    if model.get("vggface_descriptor", "fc7") != "fc7":
        parts.append(f"VGG-Face descriptor {model['vggface_descriptor']}")
    if not model.get("openface_l2_norm", True):
        parts.append("OpenFace without L2 normalisation")
    if model.get("resnet_mobilenet_final_relu", "keep") == "drop":
        parts.append("ResNet-50 and MobileNet without their last ReLU")
    return "".join(f", {part}" for part in parts)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v, digits).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


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
    return table.rename(columns=columns)


def _partial_banner(manifest: dict, counts: pd.Series) -> list[str]:
    """A study still running or interrupted: say so before any number is read."""
    unfinished = int(counts.get("incomplete", 0))
    if not unfinished:
        return []
    return [f"> **Partial results**: {unfinished} of {int(counts.sum())} arms have not finished (still running, "
            f"or interrupted: `ferbench run {manifest['study']} --resume` continues it). Tables and figures show "
            "only the epochs recorded so far; statistics count completed arms only.", ""]


def render_markdown(
    manifest: dict, trials: pd.DataFrame, data_section: str | None = None, sections: list[str] | None = None
) -> str:
    spec = manifest["spec"]
    dataset = manifest["dataset"]
    grid = spec["grid"]
    counts = trials["status"].value_counts()
    status_line = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts)
    lines = [
        f"# FERBench report — {manifest['study']} ({manifest['experiment']})",
        "",
        f"Created {manifest['created']}. {len(trials)} arms: {status_line}.",
        "",
        *_partial_banner(manifest, counts),
        "## Study",
        "",
        f"- Dataset: **{dataset['name']}**, {dataset['images']} images "
        f"{dataset['image_size'][0]}×{dataset['image_size'][1]}, {dataset['channels']} channel(s), "
        f"classes {', '.join(dataset['class_names'])}",
        f"- Split: {split_text(spec['split'])}",
        f"- Grid: backbone {grid['backbone']} × init {grid['init']} × variant {grid['variant']} × seed {grid['seed']}"
        + (f", excluding {grid['exclude']}" if grid["exclude"] else ""),
        f"- Training: {spec['train']['epochs']} epochs, {spec['train']['optimizer']} lr {spec['train']['lr']}, "
        f"batch {spec['train']['batch_size']}, input size {spec['train']['input_size']}, "
        f"augmentation {'on' if spec['train']['augment']['enabled'] else 'off'}, "
        f"head {spec['train'].get('head', 'linear')}, freezing {_freezing(spec['train'].get('freeze', {}))}, "
        f"random init {spec['train'].get('random_init', 'torch')}{_model_options(spec.get('model', {}))}",
        f"- Resources per trial: {spec['resources']['cpu']} CPU, {spec['resources']['gpu']} GPU",
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
            reasons.setdefault((row.status, reason), []).append(f"`{row.arm_id}`")
        for (status, reason), arms in reasons.items():
            lines.append(f"- {', '.join(arms)} — **{status}**: {reason}")
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
        "- Test macro / weighted F1, balanced accuracy, per-class precision / recall / F1 and the confusion "
        "matrix: torchmetrics, computed in each trial from its test predictions (kept as `test_predictions.npz`).",
        "",
        "## Reproducibility",
        "",
        f"- Dataset fingerprint (SHA-256 of pixels and labels): `{dataset['fingerprint_sha256']}`",
        f"- Git commit: `{manifest.get('git_commit') or 'unknown'}`",
        f"- Versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
        f"- Hardware: {manifest['hardware'].get('processor')}, {manifest['hardware'].get('cpu_count')} CPUs, "
        f"{manifest['hardware'].get('memory_gb', '?')} GiB, GPUs: {manifest['hardware'].get('cuda_devices') or 'none'}",
        "- Tables (CSV and Parquet): `tables/epochs.csv` (one row per trial × epoch), `tables/trials.csv` (one row "
        "per arm), `tables/mcr_mofr.csv`, `tables/summary.csv` (per model and metric across seeds), "
        "`tables/differences.csv` (paired comparisons), `tables/per_class.csv`.",
        "",
    ]
    return "\n".join(lines)
