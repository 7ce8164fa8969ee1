"""The experiment folder's inputs: what a study runs on, recorded before its first trial (layout: ``ferbench.harness.study.layout``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from ferbench.harness.study.atomic import atomic_write_json, atomic_write_text
from ferbench.harness.study.cross_dataset import write_mapping_record
from ferbench.harness.study.layout import experiment_paths, is_experiment
from ferbench.harness.study.preflight import Preflight
from ferbench.harness.data.samples import save_samples, select_samples
from ferbench.harness.spec import StudySpec, spec_to_yaml
from ferbench.harness.tasks import MULTILABEL
from ferbench.harness.data.checks import inspect as inspect_dataset, label_statistics
from ferbench.harness.data.splits import named_index_sets, save_splits

PACKAGES = ("ferbench", "torch", "torchvision", "ray", "timm", "torchmetrics", "numpy", "pandas", "deepface")


def default_experiment_name(spec: StudySpec) -> str:
    return f"{spec.study}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def latest_experiment(storage: Path, study: str) -> Path | None:
    """The most recently started experiment of ``study`` under ``storage`` (for ``--resume``)."""
    candidates = [p for p in Path(storage).glob(f"{study}-*") if is_experiment(p)]
    return max(candidates, key=lambda p: experiment_paths(p)["manifest"].stat().st_mtime, default=None)


def resume_folder(spec: StudySpec) -> Path | None:
    """The experiment a resumed study continues: ``run.name`` under ``run.storage``, else the study's newest
    there (from the bucket into its local mirror for ``s3://…``); None when there is none."""
    from ferbench.harness.study.storage import download, is_remote, latest_remote_experiment, parse_remote

    if not is_remote(spec.run.storage):
        root = Path(spec.run.storage).expanduser().resolve()
        folder = root / spec.run.name if spec.run.name else latest_experiment(root, spec.study)
        return folder if folder is not None and folder.exists() else None
    storage = parse_remote(spec.run.storage, spec.run.s3_endpoint)
    name = spec.run.name or latest_remote_experiment(storage, spec.study)
    if name is None:
        return None
    try:
        return download(storage, name, storage.mirror(name))
    except FileNotFoundError:
        return None


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hardware() -> dict:
    import torch

    hardware = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        hardware["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return hardware


def _label_summary(spec: StudySpec, dataset, index_sets: dict[str, np.ndarray]) -> dict:
    """``{"action_units": label_statistics(…)}`` for a study whose targets are the action units; ``{}`` otherwise,
    so a classification study's Data section stays as it was (SynthFER carries action units beside emotions)."""
    if spec.task != MULTILABEL.name or dataset.action_units is None:
        return {}
    return {"action_units": label_statistics(dataset.action_units, dataset.au_names, index_sets)}


def write_experiment_inputs(experiment_dir: Path, spec: StudySpec, preflight: Preflight, command: list[str]) -> None:
    """Record what the study runs on, before the first trial starts. ``grid.json`` is written last:
    its presence marks a complete experiment folder (see ``is_experiment``)."""
    paths = experiment_paths(experiment_dir)
    dataset = preflight.dataset
    index_sets = named_index_sets(preflight.splits)
    save_splits(paths["splits"], preflight.splits)
    atomic_write_text(paths["spec"], spec_to_yaml(spec))
    if spec.report.samples_per_class:  # the report renders them without the dataset
        test_idx = preflight.splits[min(preflight.splits)]["test"]
        save_samples(paths["samples"], select_samples(dataset.images, dataset.labels, dataset.class_names,
                                                      test_idx, spec.report.samples_per_class, spec.split.seed))
    atomic_write_json(
        paths["manifest"],
        {
            "study": spec.study,
            "experiment": Path(experiment_dir).name,
            "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command,
            "spec": spec.model_dump(mode="json"),
            "versions": _package_versions(),
            "git_commit": _git_commit(),
            "hardware": _hardware(),
            "dataset": {
                "name": dataset.name,
                "images": len(dataset),
                "image_size": list(dataset.image_size),
                "channels": dataset.channels,
                "class_names": list(dataset.class_names),
                "fingerprint_sha256": dataset.fingerprint(),
            },
            "data_summary": {**inspect_dataset(dataset, index_sets), **preflight.data_notes,
                             **_label_summary(spec, dataset, index_sets)},
            "split_class_counts": {
                name: dict(zip(dataset.class_names, dataset.class_counts(idx).tolist()))
                for name, idx in index_sets.items()
            },
            "weights": {
                backbone: {"file": path, "source": preflight.weight_sources[backbone], "sha256": _sha256(path)}
                for backbone, path in preflight.weight_files.items()
            },
        },
    )
    if preflight.eval_sets:  # how eval.datasets' labels were mapped, per fold, for the report
        write_mapping_record(paths["cross_dataset"], spec, dataset, preflight.splits, preflight.eval_sets)
    atomic_write_json(paths["grid"], preflight.arms)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_stored_spec(experiment_dir: Path) -> StudySpec:
    return StudySpec.model_validate(yaml.safe_load(experiment_paths(experiment_dir)["spec"].read_text()))
