"""``ferbench data inspect PATH``: what a dataset holds and what is wrong with it, before a study uses it.

Why a command: a researcher pointing FERBench at a new copy of FER2013, RAF-DB or CK+ should see
the class balance, the subjects, exact duplicates (above all those shared by the training and test
parts), blank images and the files the loader skipped or resized, in seconds and without a study.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from ferbench.harness.spec import DataSpec

EXIT_OK, EXIT_USAGE = 0, 2
FORMATS: tuple[str, ...] = typing.get_args(DataSpec.model_fields["format"].annotation)


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data`` and its subcommand ``inspect`` to ``ferbench``'s subparsers."""
    data = subparsers.add_parser("data", help="inspect a dataset: classes, subjects, duplicates, leaks, blank images")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="{inspect}")
    inspecting = actions.add_parser("inspect", help="summarise a dataset and check it for duplicates and leaks")
    inspecting.add_argument("path", type=Path, metavar="PATH", help="dataset file or folder (e.g. fer2013.csv, a CK+ folder)")
    inspecting.add_argument("--format", default="auto", choices=FORMATS, help="dataset layout (default: auto-detect)")
    inspecting.add_argument("--json", action="store_true", help="machine-readable output")
    inspecting.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="other data options, e.g. --set contempt=drop --set class_map.joy=happy")
    return data


def _error(message: str) -> int:
    print(f"ferbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def data_spec(path: Path, data_format: str, overrides: list[str]) -> DataSpec:
    """The ``DataSpec`` for ``PATH --format F --set K=V ...``; keys may carry the ``data.`` prefix
    a study's --set uses. Raises ``SpecError`` naming the key."""
    from pydantic import ValidationError

    from ferbench.harness.spec import SpecError, _format_validation_error, apply_override

    raw: dict[str, Any] = {"data": {"format": data_format, "path": str(path.expanduser())}}
    for assignment in overrides:
        apply_override(raw, assignment if assignment.startswith("data.") else f"data.{assignment}")
    try:
        return DataSpec.model_validate(raw["data"])
    except ValidationError as err:
        raise SpecError("; ".join(f"data.{line}" for line in _format_validation_error(err).splitlines())) from None


def _groups_text(examples: list[dict[str, Any]]) -> list[str]:
    from ferbench.harness.data.checks import describe_sample

    return [f"    group of {ex['size']}: " + ", ".join(describe_sample(m) for m in ex["members"])
            + (" …" if ex["size"] > len(ex["members"]) else "") for ex in examples]


def _listing(title: str, items: list[str]) -> list[str]:
    from ferbench.harness.data.checks import LISTED

    lines = [f"{title}: {len(items)}"] + [f"    {item}" for item in items[:LISTED]]
    return lines + ([f"    … and {len(items) - LISTED} more"] if len(items) > LISTED else [])


def summary_text(summary: dict[str, Any]) -> str:
    """The human-readable form of ``data_checks.inspect``'s summary."""
    from ferbench.harness.data.checks import counts_with_shares, describe_sample
    from ferbench.harness.data.dataset import UNLABELLED_CLASS

    height, width = summary["image_size"]
    split = {"given": "per split", "official": "per official split", None: "no official split"}[summary["split_kind"]]
    dup, cross, const = summary["duplicates"], summary["cross_split_duplicates"], summary["constant_images"]
    emotions = list(summary["classes"]) != [UNLABELLED_CLASS]  # DISFA, a multi-label CSV: labels only
    lines = [
        f"{summary['name']} (format {summary['format']}): {summary['source'] or '-'}",
        f"  {summary['images']:,} images, {height}×{width}, {summary['channels']} channel(s), "
        + (f"{len(summary['classes'])} classes" if emotions else "no emotion labels"),
        f"  subjects: {summary['subjects'] if summary['subjects'] is not None else 'unknown'}",
        "",
        *([f"Images per class ({split}):", counts_with_shares(summary["class_counts"]).to_string(), ""] if emotions else []),
        f"Exact duplicates: {dup['groups']} group(s), {dup['images']} images ({dup['redundant']} redundant copies)",
        *_groups_text(dup["examples"]),
    ]
    if cross is not None:
        combos = ", ".join(f"{combo}: {n}" for combo, n in cross["by_splits"].items())
        lines += [f"Cross-split duplicates: {cross['groups']} group(s), {cross['images']} images"
                  + (f" ({combos}); {cross['conflicting_labels']} with conflicting labels" if cross["groups"] else ""),
                  *_groups_text(cross["examples"])]
    lines += [f"Constant images: {const['count']}"]
    lines += [f"    {describe_sample(ex)} value {ex['value']}" for ex in const["examples"]]
    lines += _listing("Skipped unreadable files", [f"{item.get('path')}: {item.get('reason')}" for item in summary["skipped"]])
    lines += _listing("Resized files", summary["resized"])
    converted = summary.get("converted") or {"to": None, "paths": []}
    lines += _listing(f"Files converted to {converted['to'] or 'the dataset colour mode'}", converted["paths"])
    lines += _listing("Ignored entries (not image files)", summary.get("ignored", []))
    lines += _listing("Classes left out", [f"{item['class']} ({item['images']} images): {item['reason']}"
                                           for item in summary.get("dropped_classes", [])])
    lines += _label_lines(summary.get("action_units"))
    lines += [f"WARNING: {warning}" for warning in summary["warnings"]]
    return "\n".join(lines)


def _label_lines(labels: dict[str, Any] | None) -> list[str]:
    """Each label's positives (multi-label datasets), as the report's "Labels per image" counts them."""
    if not labels:
        return []
    images = labels["images"]["all"]
    share = lambda count: f"{count:,} ({count / images:.1%})" if images else "0"  # noqa: E731
    return ["", f"Labels per image (an image can have several, or none; {images:,} images):",
            *(f"  {name:<10} {share(count)}" for name, count in zip(labels["names"], labels["positives"]["all"])),
            f"  {'none':<10} {share(labels['no_label']['all'])}"]


def cmd_inspect(args: argparse.Namespace) -> int:
    from ferbench.harness.data.checks import inspect, label_statistics
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.spec import SpecError

    if not args.path.expanduser().exists():
        from ferbench.harness.data.formats.common import link_problem

        problem = link_problem(args.path.expanduser())
        return _error(f"{args.path}: {problem}; fix the link" if problem else f"{args.path}: no such file or folder")
    try:
        dataset = load_dataset(data_spec(args.path, args.format, args.overrides))
    except KeyError as err:  # the loader registry has no entry for this format
        return _error(f"data.format: no loader for {err.args[0]!r} yet")
    except (SpecError, ValueError, OSError) as err:  # ValueError covers the loaders' DataError
        return _error(" ".join(str(err).split()))
    summary = inspect(dataset)
    if dataset.action_units is not None:  # DISFA, a multi-label CSV, SynthFER: the labels' prevalence too
        summary["action_units"] = label_statistics(dataset.action_units, dataset.au_names, {})
    print(json.dumps(summary, indent=2) if args.json else summary_text(summary))
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """Run ``ferbench data <subcommand>``; bad input ends with one ``ferbench: error:`` line and exit code 2."""
    return {"inspect": cmd_inspect}[args.data_command](args)
