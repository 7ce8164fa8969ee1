"""The report's "## Data" section and its class-count figure, from ``ferbench.harness.data.checks.inspect``'s summary.

Why in the report: a reader judging a benchmark needs the class balance per split and whether the
test images also appear in training, next to the numbers they qualify; for a multi-label study also how
rare each label is and which labels occur together (an F1 on a label active in 4% of the images reads
differently from one on a label active in half of them).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from ferbench.harness.study.atomic import atomic_write_bytes
from ferbench.harness.data.checks import LISTED, counts_with_shares, describe_missing, describe_sample
from ferbench.harness.data.dataset import UNLABELLED_CLASS
from ferbench.reports.escaping import md_code, md_text
from ferbench.reports.markdown import markdown_table

FIGURE = "class_counts.png"
LABEL_FIGURE = "label_statistics.png"  # a multi-label study's label prevalence and co-occurrence


def _count_columns(summary: dict[str, Any]) -> list[str]:
    """The columns drawn: each split, or ``all`` when the dataset has none."""
    return list(summary["splits"]) or ["all"]


def plot_class_counts(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars of images per class and split, counts on the bars, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    counts = pd.DataFrame(summary["class_counts"]).drop(index="total")[_count_columns(summary)]
    long = counts.rename_axis("class").reset_index().melt(id_vars="class", var_name="split", value_name="images")
    figure, axes = plt.subplots(figsize=(min(14.0, max(6.0, 0.35 * len(counts) * (1 + len(counts.columns)))), 4.5))
    sns.barplot(data=long, x="class", y="images", hue="split", ax=axes, palette="colorblind")
    for bars in axes.containers:
        axes.bar_label(bars, fontsize=7, padding=1)
    axes.set(title=f"{summary['name']}: images per class and split", xlabel="class", ylabel="images")
    axes.margins(y=0.12)
    if len(counts.columns) == 1 and axes.get_legend() is not None:
        axes.get_legend().remove()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _groups(examples: list[dict[str, Any]]) -> list[str]:
    return [f"  - {ex['size']} images: " + ", ".join(md_code(describe_sample(m)) for m in ex["members"])
            + (" …" if ex["size"] > len(ex["members"]) else "") for ex in examples]


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return [f"- {title}: none"]
    more = [f"  - … and {len(items) - LISTED} more"] if len(items) > LISTED else []
    return [f"- {title}: {len(items)}", *(f"  - {md_code(item)}" for item in items[:LISTED]), *more]


def _duplicates(summary: dict[str, Any]) -> list[str]:
    dup, cross = summary["duplicates"], summary["cross_split_duplicates"]
    lines = [f"- Exact duplicates within the dataset: {dup['groups']} group(s), {dup['images']} images "
             f"({dup['redundant']} redundant copies)", *_groups(dup["examples"])]
    if cross is None:
        return lines + ["- Duplicates across splits: not checked (no splits)"]
    if not cross["groups"]:
        return lines + ["- Duplicates across splits: none"]
    combos = ", ".join(f"{combo}: {n}" for combo, n in cross["by_splits"].items())
    return lines + [f"- **Duplicates across splits: {cross['groups']} group(s), {cross['images']} images ({combos}); "
                    f"{cross['conflicting_labels']} with conflicting labels**", *_groups(cross["examples"])]


def _dropped(per_fold: dict[str, int] | None) -> list[str]:
    if per_fold is None:
        return []
    counts = ", ".join(f"fold {fold}: {n}" for fold, n in per_fold.items()) if len(per_fold) > 1 else sum(per_fold.values())
    return [f"- Dropped from training because val or test hold the same image (`data.drop_duplicates`): {counts}"]


def _external_pool(pool: dict | None) -> list[str]:
    if pool is None:
        return []
    height, width = pool["resized_to"]
    line = (f"- External unlabeled pool (`pseudo_label.unlabeled_path`): {pool['images']:,} images from {md_code(pool['source'])}, "
            f"labels unknown; {pool['resized']} resized to {height}×{width}, {pool['converted']} converted to {md_text(pool['converted_to'])}")
    return [line, *_listing("Unreadable pool files skipped", [f"{item['path']}: {item['reason']}" for item in pool["skipped"]])]


def _converted(summary: dict[str, Any]) -> list[str]:
    converted = summary.get("converted") or {"to": None, "paths": []}
    target = {"grayscale": "grayscale", "rgb": "RGB"}.get(converted["to"], "the dataset's colour mode")
    return _listing(f"Files converted to {target} (the mode most files have)", converted["paths"])


def _left_out(summary: dict[str, Any]) -> list[str]:
    """Classes on disk that the study does not have: left out by an option, or nothing of them readable."""
    dropped = summary.get("dropped_classes") or []
    if not dropped:
        return ["- Classes left out: none"]
    return [f"- Classes left out: {len(dropped)}",
            *(f"  - {md_code(item['class'])}, {item['images']:,} images: {md_text(item['reason'])}" for item in dropped)]


def _missing(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(warnings, list lines) for classes with no image in a part of the split (from preflight)."""
    missing = summary.get("missing_classes") or []
    warnings = [describe_missing(entry) for entry in missing if entry["part"] == "test"]
    if not missing:
        return warnings, ["- Classes missing from a part of the split: none"]
    return warnings, [f"- Classes missing from a part of the split: {len(missing)}",
                      *(f"  - {md_text(describe_missing(entry))}" for entry in missing)]


def _label_statistics(stats: dict[str, Any] | None, split: str, figures_dir: Path) -> list[str]:
    """The multi-label dataset's labels (recorded by the experiment for a multi-label study, else nothing): how
    often each is active per part, how many images have none, and which labels occur together."""
    if stats is None:
        return []
    from ferbench.reports.au_figures import plot_label_statistics

    plot_label_statistics(stats, Path(figures_dir) / LABEL_FIGURE)
    names = stats["names"]
    counts = {part: {**dict(zip(names, stats["positives"][part])), "no label active": stats["no_label"][part],
                     "total": images} for part, images in stats["images"].items()}
    prevalence = counts_with_shares(counts).rename(index={"total": "images"}).rename_axis("label").reset_index()
    co_occurrence = pd.DataFrame(stats["co_occurrence"], index=pd.Index(names, name="label"), columns=names).reset_index()
    return [
        f"### Labels per image, {split}", "",
        "Images with each label active (share of the part's images); an image can have several labels, or none.", "",
        markdown_table(prevalence),
        "Co-occurrence over all images: images with both labels active (the diagonal: each label's positives).", "",
        markdown_table(co_occurrence),
        f"![Label prevalence and co-occurrence](figures/{LABEL_FIGURE})", "",
    ]


def render_data_section(summary: dict[str, Any], figures_dir: Path) -> str:
    """Markdown for report.md's "## Data" section; writes ``figures_dir / class_counts.png``, linked
    as ``figures/class_counts.png`` (``figures_dir`` is the report's ``figures`` folder)."""
    emotions = list(summary["classes"]) != [UNLABELLED_CLASS]  # DISFA, a multi-label CSV: labels only
    if emotions:
        plot_class_counts(summary, Path(figures_dir) / FIGURE)
    height, width = summary["image_size"]
    classes = f"{len(summary['classes'])} classes" if emotions else "no emotion labels"
    subjects = f"{summary['subjects']} distinct subjects" if summary["subjects"] is not None else "subjects unknown"
    split = {"given": "per split", "official": "per official split", None: "whole dataset"}[summary["split_kind"]]
    constant = summary["constant_images"]
    missing_warnings, missing_lines = _missing(summary)
    lines = [
        "## Data", "",
        f"**{md_text(summary['name'])}** (format {md_code(summary['format'])}, source {md_code(summary['source'] or '-')}): "
        f"{summary['images']:,} images {height}×{width}, {summary['channels']} channel(s), "
        f"{classes}, {subjects}.", "",
        *(f"> **WARNING:** {md_text(warning)}\n" for warning in [*summary["warnings"], *missing_warnings]),
        *([f"### Images per class, {split}", "",
           markdown_table(counts_with_shares(summary["class_counts"]).reset_index()),
           f"![Images per class and split](figures/{FIGURE})", ""] if emotions else []),
        *_label_statistics(summary.get("action_units"), split, figures_dir),
        "### Quality checks", "",
        *_duplicates(summary),
        *_dropped(summary.get("dropped_training_duplicates")),
        *_external_pool(summary.get("unlabeled_pool")),
        f"- Constant (blank) images: {constant['count']}",
        *(f"  - {md_code(describe_sample(ex))} value {ex['value']}" for ex in constant["examples"]),
        *_left_out(summary),
        *missing_lines,
        *_listing("Unreadable files skipped", [f"{item.get('path')}: {item.get('reason')}" for item in summary["skipped"]]),
        *_listing("Files resized to the dataset's image size", summary["resized"]),
        *_converted(summary),
        *_listing("Entries ignored (not image files)", summary.get("ignored") or []),
        "",
    ]
    return "\n".join(lines)
