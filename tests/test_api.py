"""The Python API (``ferbench.run``, ``ferbench.load``, ``ferbench.Experiment``): its tables are the report's
CSV tables, number for number; it opens partial experiments; it explains a folder that is no experiment;
``run`` prints nothing; ``import ferbench`` stays cheap.

Most checks read the session's reference experiment (conftest's ``reference_study``), copied before anything
in it is changed; one runs a one-arm, one-epoch study through ``ferbench.run``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REFERENCE, SMALL

import ferbench
from ferbench.api import override_args
from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.study.experiment import read_stored_spec

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("epochs", "trials", "mcr_mofr", "summary", "differences", "per_class")


def assert_tables_match_report(experiment: ferbench.Experiment, report_dir: Path) -> None:
    """Each DataFrame reads back from CSV as the report's CSV reads: same columns, rows and numbers (and the
    CSV text itself is the same, so no value differs even in its last digit)."""
    for name in TABLES:
        frame, written = getattr(experiment, name), report_dir / "tables" / f"{name}.csv"
        assert isinstance(frame, pd.DataFrame)
        assert frame.to_csv(index=False) == written.read_text(), name
        pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(frame.to_csv(index=False))), pd.read_csv(written),
                                      check_exact=True, obj=name)


@pytest.fixture(scope="module")
def reference(reference_study) -> ferbench.Experiment:
    return ferbench.load(reference_study.experiment_dir)


def test_loaded_tables_are_the_report_csvs(reference, reference_study):
    assert_tables_match_report(reference, reference_study.report_dir)
    assert len(reference.trials) == len(reference_study.statuses) and reference.epochs["epoch"].max() == 3
    assert {"MCR", "MOFR"} == set(reference.mcr_mofr["kind"]) and not reference.per_class.empty


def test_statuses_arms_paths_and_repr(reference, reference_study):
    assert reference.statuses == reference_study.statuses
    assert reference.statuses == dict(zip(reference.trials["arm_id"], reference.trials["status"]))
    assert reference.finished and reference.path == reference_study.experiment_dir
    arms = reference.arms.set_index("arm_id")
    assert list(arms.index) == list(reference_study.statuses) and set(arms["status"]) == {"completed"}
    for arm_id, trial_id in zip(reference.trials["arm_id"], reference.trials["trial_id"]):
        folder = reference.path / f"{arm_id}_{trial_id}"
        assert reference.arm_path(arm_id) == folder == arms.loc[arm_id, "trial_dir"]
        assert (folder / "result.json").is_file()
    with pytest.raises(KeyError, match="'nope' is not an arm of .*; its arms: small_cnn_"):
        reference.arm_path("nope")
    n = len(reference_study.statuses)
    assert repr(reference) == f"<Experiment 'quick' at {reference.path}: {n} arms, {n} completed>"


def test_spec_reads_back_as_the_study_resolved_it(reference, reference_study):
    folder = reference_study.experiment_dir.parent  # where the fixture wrote the reference's weight files
    resolved = load_spec("quick", [*REFERENCE, f"weights.files.small_cnn={folder / 'small_cnn.pth'}",
                                   f"weights.files.mobilenet_v1={folder / 'mnv1.safetensors'}",
                                   f"run.storage={folder}", "run.name=reference"])
    assert reference.spec == resolved == read_stored_spec(reference.path)
    assert reference.study == "quick" and reference.spec_notes == ()


def _interrupt_after_epoch(trial_dir: Path, epoch: int) -> None:
    """What a study killed after ``epoch`` leaves: no later checkpoint, result rows or test artifacts."""
    for checkpoint in trial_dir.glob("checkpoint_*"):
        if int(checkpoint.name.split("_")[1]) > epoch:
            shutil.rmtree(checkpoint)
    for artifact in ("test_per_class.json", "test_predictions.npz"):
        (trial_dir / artifact).unlink()
    rows = [line for line in (trial_dir / "result.json").read_text().splitlines() if json.loads(line)["epoch"] <= epoch]
    (trial_dir / "result.json").write_text("\n".join(rows) + "\n")


@pytest.mark.e2e  # a study of its own / a copied experiment re-rendered
def test_a_partial_experiment_without_a_report_loads_and_reports(reference, reference_study, tmp_path):
    copy = Path(shutil.copytree(reference_study.experiment_dir, tmp_path / "partial", ignore=shutil.ignore_patterns("report")))
    never_started, interrupted = "small_cnn_pretrained_baseline_s1", "mobilenet_v1_random_baseline_s1"
    shutil.rmtree(copy / reference.arm_path(never_started).name)
    _interrupt_after_epoch(copy / reference.arm_path(interrupted).name, 2)

    partial = ferbench.load(copy)
    expected = {**reference_study.statuses, never_started: "incomplete", interrupted: "incomplete"}
    assert partial.statuses == expected == dict(zip(partial.trials["arm_id"], partial.trials["status"]))
    assert not partial.finished and "2 incomplete" in repr(partial)
    assert partial.arm_path(never_started) is None and partial.arm_path(interrupted) == copy / reference.arm_path(interrupted).name
    epochs_of = partial.epochs.groupby("arm_id")["epoch"].max()
    assert never_started not in epochs_of and epochs_of[interrupted] == 2 and epochs_of.drop(interrupted).eq(3).all()
    assert set(partial.per_class["arm_id"]) == set(reference.per_class["arm_id"]) - {never_started, interrupted}
    counts = partial.summary.query("metric == 'test_acc'").set_index(["backbone", "init", "variant"])["n"]
    assert counts["small_cnn", "pretrained", "baseline"] == 1 and counts["mobilenet_v1", "random", "baseline"] == 1

    report_dir = partial.report()  # rendered from the partial folder; the tables are those it wrote
    assert report_dir == copy / "report" and "Partial results" in (report_dir / "report.md").read_text()
    assert_tables_match_report(partial, report_dir)


@pytest.mark.parametrize("where, error, message", [
    ("missing", FileNotFoundError, r"missing: no such folder; pass an experiment folder that a study wrote"),
    ("plain", ValueError, r"plain is not a FERBench experiment \(no ferbench/grid.json\); pass an experiment folder"),
    (".", ValueError, r"is not a FERBench experiment \(no ferbench/grid.json\); it holds the experiments inner: pass one"),
    ("inner/report", ValueError, r"inner/report is not a FERBench experiment .*; it lies inside the experiment .*inner: pass"),
])
def test_a_folder_that_is_no_experiment_is_one_line_naming_it_and_the_fix(tmp_path, where, error, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "inner" / "ferbench").mkdir(parents=True)
    (tmp_path / "inner" / "report").mkdir()
    (tmp_path / "inner" / "ferbench" / "grid.json").write_text("[]")
    with pytest.raises(error, match=message) as caught:
        ferbench.load(tmp_path / where)
    assert str((tmp_path / where).resolve()) in str(caught.value) and "\n" not in str(caught.value)


def test_overrides_are_the_cli_assignments_with_yaml_values(tmp_path):
    overrides = {"train.epochs": 2, "grid.seed": (0, 1), "train.lr": 1e-4, "data.num_images": np.int64(300),
                 "grid.exclude": [{"init": "random", "variant": "pseudo_label"}], "grid.backbone": ["small_cnn"],
                 "weights.download": False, "run.name": "yes", "run.storage": tmp_path / "results"}
    args = override_args(overrides)
    assert args[:3] == ["train.epochs=2", "grid.seed=[0, 1]", "train.lr=0.0001"]
    assert args[-2:] == ["run.name=yes", f"run.storage={tmp_path / 'results'}"]  # text as written, not quoted
    spec = load_spec("quick", args)
    assert (spec.train.epochs, spec.grid.seed, spec.train.lr, spec.data.num_images) == (2, [0, 1], 1e-4, 300)
    assert spec.grid.exclude == [{"init": "random", "variant": "pseudo_label"}] and spec.grid.backbone == ["small_cnn"]
    assert spec.weights.download is False and spec.run.name == "yes" and spec.run.storage == str(tmp_path / "results")


def test_a_bad_spec_raises_its_message_before_anything_is_written(tmp_path, capfd):
    with pytest.raises(SpecError, match=r"train.epochs: .*greater than or equal to 1") as caught:
        ferbench.run("quick", {"train.epochs": 0}, storage=tmp_path)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(SpecError, match=r"train.epochz: unknown key"):
        ferbench.run("quick", {"train.epochz": 1}, storage=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"resume: no experiment of study 'quick' named 'absent' under .*; run it without"):
        ferbench.run("quick", storage=tmp_path, name="absent", resume=True)
    assert list(tmp_path.iterdir()) == [] and capfd.readouterr() == ("", "")


@pytest.mark.e2e  # a study of its own / a copied experiment re-rendered
def test_run_is_quiet_and_returns_its_experiment(reference_study, tmp_path, capfd):
    """One arm, one epoch (the reference's data and recipe; the shared fixture has started Ray), then resumed
    with ``verbose``: it says so on stdout and trains nothing again."""
    overrides = {item.split("=", 1)[0]: item.split("=", 1)[1] for item in SMALL} | {"grid.seed": [0], "train.epochs": 1}
    experiment = ferbench.run("quick", overrides, storage=tmp_path, name="tiny")
    assert capfd.readouterr() == ("", "")
    assert isinstance(experiment, ferbench.Experiment) and experiment.path == tmp_path / "tiny"
    assert experiment.statuses == {"small_cnn_random_baseline_s0": "completed"} and experiment.problems == ()
    assert experiment.spec.train.epochs == 1 and experiment.spec.grid.seed == [0]
    assert_tables_match_report(experiment, tmp_path / "tiny" / "report")
    assert list(experiment.epochs["epoch"]) == [0, 1]

    trial_dir = experiment.arm_path("small_cnn_random_baseline_s0")
    resumed = ferbench.run("quick", storage=tmp_path, name="tiny", resume=True, verbose=True)  # nothing left to train
    out, _ = capfd.readouterr()
    assert out.startswith(f"Resuming 'quick': 1 arms (1 finished before), 1 epochs each → {tmp_path / 'tiny'}\n")
    assert resumed.path == experiment.path and resumed.statuses == experiment.statuses
    assert [p for p in resumed.path.iterdir() if p.name.startswith("small_cnn_")] == [trial_dir]
    logger = logging.getLogger("ferbench")  # verbose's console handler is gone again
    assert [type(h) for h in logger.handlers] == [logging.NullHandler] and logger.propagate


def test_import_ferbench_is_cheap_and_the_api_is_there_when_asked(tmp_path):
    script = (
        "import sys, ferbench\n"
        "heavy = ('torch', 'ray', 'pandas', 'numpy', 'ferbench.api', 'ferbench.harness')\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "api = (ferbench.run, ferbench.load, ferbench.Experiment, ferbench.__version__)\n"
        "after = [m for m in heavy[:4] if m in sys.modules]\n"
        "print(before, after, api[2].__module__, api[3], sorted(set(ferbench.__all__) - set(dir(ferbench))))\n"
        "ferbench.no_such_name\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.split() == ["[]", "[]", "ferbench.api", ferbench.__version__, "[]"], done.stderr
    assert done.stderr.strip().endswith("AttributeError: module 'ferbench' has no attribute 'no_such_name'")


def test_the_package_is_typed():
    assert (ROOT / "ferbench" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data["ferbench"] == ["py.typed"]
