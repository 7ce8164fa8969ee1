"""The report reads the stored spec once, into the spec model (``ferbench.reports.spec_view``): defaults
come from the model, a spec written by an earlier version (an old key, a removed value, a broken rule)
still renders with a note, a spec the report cannot use is the one-line damaged-manifest error; the
MCR/MOFR window labels have one parser, the Pareto front one rule, and the report code prints nothing.

The experiment folders here are written by hand (no Ray, no training): a 2-arm grid, 6 epochs of made-up
curves, so a report takes seconds."""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferbench.harness.cli.main import main
from ferbench.harness.spec import StudySpec, load_spec
from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.study.layout import experiment_paths
from ferbench.reports import build_report
from ferbench.reports.collect import collect, read_spec
from ferbench.reports.derived import mcr_mofr, parse_window, pareto_optimal, window_label, window_order
from ferbench.reports.figures import pareto_front
from ferbench.reports.markdown import md_cell
from ferbench.reports.recommendation import _pareto
from ferbench.reports.spec_view import stored_spec

REPORTS = Path(__file__).resolve().parents[1] / "reports"
EPOCHS = 6
CLASSES = ["angry", "happy", "neutral"]


def _spec() -> dict:
    """The spec a study of this version stores: 2 arms, ``EPOCHS`` epochs, windows of 3."""
    return load_spec("quick", ["grid.backbone=[small_cnn]", "grid.init=[random,pretrained]", "grid.seed=[0]",
                               "grid.exclude=[]", "grid.variant=[baseline]", f"train.epochs={EPOCHS}",
                               "report.window=3"]).model_dump(mode="json")


def _rows(arm: int) -> list[dict]:
    rows = []
    for epoch in range(EPOCHS + 1):
        train_acc, val_acc = 0.3 + 0.08 * epoch + 0.02 * arm, 0.3 + 0.05 * epoch + 0.01 * arm
        row = {"epoch": epoch, "train_acc": train_acc, "val_acc": val_acc, "train_loss": 1.5 - 0.1 * epoch,
               "val_loss": 1.6 - 0.07 * epoch, "lr": 1e-3, "epoch_time_s": 0.0 if epoch == 0 else 2.0,
               "train_images_per_s": np.nan if epoch == 0 else 100.0 + 10 * arm, "params_total": 1000 + 500 * arm,
               "params_trainable": 1000 + 500 * arm, "input_size": 24}
        if epoch == EPOCHS:
            row.update(trial_finished=True, test_acc=val_acc - 0.01, test_macro_f1=val_acc - 0.05, test_loss=1.0)
        rows.append(row)
    return rows


def write_experiment(folder: Path, spec: dict) -> Path:
    """An experiment folder as a finished study leaves it, with ``spec`` stored in its manifest."""
    paths = experiment_paths(folder)
    arms = [{**arm, "status": "scheduled"} for arm in StudySpec.model_validate(spec).arms()]
    for number, arm in enumerate(arms):
        trial = folder / f"{arm['arm_id']}_00000_{number:05d}"
        atomic_write_json(trial / "params.json", {})
        (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in _rows(number)))
    atomic_write_json(paths["manifest"], {
        "study": "quick", "experiment": folder.name, "created": "2026-01-01T00:00:00+00:00", "spec": spec,
        "versions": {"ferbench": "0.0"}, "git_commit": None, "hardware": {"processor": "x86_64", "cpu_count": 2},
        "dataset": {"name": "SynthFER", "images": 90, "image_size": [24, 24], "channels": 1, "class_names": CLASSES,
                    "fingerprint_sha256": "0" * 64},
        "split_class_counts": {part: dict.fromkeys(CLASSES, n) for part, n in (("train", 20), ("val", 5), ("test", 5))},
    })
    atomic_write_json(paths["grid"], arms)
    return folder


@pytest.fixture(scope="module")
def current(tmp_path_factory) -> Path:
    """A folder this version wrote, and its report."""
    folder = write_experiment(tmp_path_factory.mktemp("spec") / "current", _spec())
    build_report(folder)
    return folder


def _edited(current: Path, tmp_path: Path, edit) -> Path:
    folder = Path(shutil.copytree(current, tmp_path / "edited"))
    shutil.rmtree(folder / "report")
    path = experiment_paths(folder)["manifest"]
    manifest = json.loads(path.read_text())
    edit(manifest["spec"])
    atomic_write_json(path, manifest)
    return folder


def _report(folder: Path) -> str:
    return (folder / "report" / "report.md").read_text()


def _notes_line(report: str) -> str:
    return next((line for line in report.splitlines() if line.startswith("- Stored spec:")), "")


# --------------------------------------------------------------------------- reading the spec


def test_a_spec_this_version_wrote_reads_back_unchanged():
    raw = _spec()
    stored = stored_spec({"spec": raw})
    assert stored.notes == () and stored.spec == StudySpec.model_validate(raw)
    assert stored.spec.model_dump(mode="json") == raw


def test_keys_an_earlier_version_did_not_write_take_the_models_defaults():
    raw = _spec()
    for section, key in (("train", "head"), ("train", "freeze"), ("train", "random_init"), ("train", "select"),
                         ("train", "select_metric"), ("split", "kind"), ("split", "folds"), ("split", "unlabeled_fraction")):
        del raw[section][key]
    del raw["report"], raw["model"]
    stored = stored_spec({"spec": raw})
    assert stored.notes == ()  # nothing refused: a missing key is a default, as in any spec
    spec = stored.spec
    assert (spec.report.window, spec.train.head, spec.train.freeze.policy, spec.train.random_init) == (5, "linear", "none", "torch")
    assert (spec.train.select, spec.train.select_metric, spec.split.kind, spec.split.folds) == ("last", "val_acc", "stratified", None)
    assert spec.model.vggface_descriptor == "fc7" and spec.model.openface_l2_norm is True


def test_an_old_key_is_left_out_and_a_removed_value_kept_as_stored_each_with_a_note():
    raw = _spec()
    raw["train"]["freeze_last_k"] = 4  # an old key
    raw["train"]["optimizer"] = "rmsprop"  # a value this version refuses
    raw["grid"]["backbone"] = ["retired_net", "small_cnn"]  # a backbone no longer registered
    raw["legacy"] = {"a": 1}  # an old section
    stored = stored_spec({"spec": raw})
    spec = stored.spec
    assert isinstance(spec, StudySpec) and isinstance(spec.train.lr, float)
    assert spec.train.optimizer == "rmsprop" and spec.grid.backbone == ["retired_net", "small_cnn"]  # what ran
    assert spec.train.epochs == EPOCHS and spec.split.ratios == (0.7, 0.1, 0.2)  # the rest typed as usual
    assert not hasattr(spec.train, "freeze_last_k")
    notes = "\n".join(stored.notes)
    assert len(stored.notes) == 4
    assert "train.freeze_last_k: not a setting of this version; left out (stored value 4)" in notes
    assert "legacy: not a setting of this version" in notes
    assert re.search(r"train\.optimizer: 'rmsprop' is refused by this version \(.*'adam'.*\); shown as stored", notes)
    assert re.search(r"grid\.backbone: \['retired_net', 'small_cnn'\] is refused .*unknown backbone 'retired_net'.*shown as stored", notes)


def test_refused_report_settings_and_sections_that_are_no_mapping_take_defaults():
    raw = _spec()
    raw["report"]["window"] = 0
    raw["model"] = "fc8"
    stored = stored_spec({"spec": raw})
    assert stored.spec.report.window == 5 and stored.spec.model.vggface_descriptor == "fc7"
    assert any(note.startswith("report.window: 0 is refused") and note.endswith("the default 5 is used instead")
               for note in stored.notes)
    assert any(note.startswith("model: 'fc8' is refused") and note.endswith("its defaults are used instead")
               for note in stored.notes)


def test_a_rule_across_fields_is_not_applied_to_a_stored_spec():
    across_sections = _spec()
    across_sections["train"]["freeze"]["policy"] = "keras_last_k"  # small_cnn has no recorded Keras layer list
    within_a_section = _spec()
    within_a_section["train"]["deterministic"], within_a_section["train"]["cudnn_benchmark"] = True, True
    for raw, rule in ((across_sections, "train.freeze.policy: keras_last_k needs a recorded Keras layer list"),
                      (within_a_section, "train.cudnn_benchmark=true picks kernels by timing")):
        stored = stored_spec({"spec": raw})
        assert stored.spec.model_dump(mode="json") == raw  # as stored
        assert len(stored.notes) == 1 and stored.notes[0].startswith(rule)
        assert stored.notes[0].endswith("(a rule of this version; not applied to the stored spec)")


@pytest.mark.parametrize("edit, reason", [
    (lambda spec: spec["train"].update(epochs="twenty"), "spec.train.epochs: 'twenty' cannot be used"),
    (lambda spec: spec["grid"].pop("backbone"), "spec.grid.backbone: required, and missing"),
    (lambda spec: spec.update(grid=["small_cnn"]), "spec.grid: ['small_cnn'] cannot be used"),
])
def test_a_spec_the_report_cannot_use_is_the_one_line_damaged_manifest_error(current, tmp_path, capsys, edit, reason):
    folder = _edited(current, tmp_path, edit)
    path = experiment_paths(folder)["manifest"]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: damaged \({re.escape(reason)}"):
        read_spec(folder)
    with pytest.raises(ValueError, match=re.escape(f"{path}: damaged ({reason}")):
        build_report(folder)
    assert main(["report", str(folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err


# --------------------------------------------------------------------------- the report of an earlier version's folder


def test_a_folder_of_an_earlier_version_renders_with_its_notes(current, tmp_path, caplog):
    def earlier(spec: dict) -> None:
        spec["train"]["optimizer"] = "rmsprop"
        spec["train"]["freeze_last_k"] = 4
        del spec["train"]["head"], spec["model"]  # keys that version did not write yet
        spec["report"] = {"window": 3, "style": "wide"}

    folder = _edited(current, tmp_path, earlier)
    with caplog.at_level(logging.WARNING, logger="ferbench.reports"):
        build_report(folder)
    assert any("3 setting(s) of the stored spec" in record.getMessage() for record in caplog.records)
    report, before = _report(folder), _report(current)
    notes = _notes_line(report)
    assert notes.startswith("- Stored spec: written by another version of FERBench; read with 3 change(s): ")
    assert md_cell("train.freeze_last_k: not a setting of this version; left out (stored value 4)") in notes
    assert md_cell("report.style: not a setting of this version; left out (stored value 'wide')") in notes
    assert "rmsprop" in notes and _notes_line(before) == ""
    training = next(line for line in report.splitlines() if line.startswith("- Training:"))
    assert "rmsprop lr" in training and "head linear" in training  # as stored; the model's default
    # Apart from the settings shown, the report is the same report: tables and every other line.
    assert [line for line in report.splitlines() if not line.startswith(("- Training:", "- Stored spec:"))] == \
        [line for line in before.splitlines() if not line.startswith("- Training:")]
    for table in ("trials", "mcr_mofr", "summary", "differences", "epochs"):
        pd.testing.assert_frame_equal(pd.read_csv(folder / "report" / "tables" / f"{table}.csv"),
                                      pd.read_csv(current / "report" / "tables" / f"{table}.csv"))


def test_the_window_and_the_epoch_count_come_from_the_stored_spec(current):
    mcr = pd.read_csv(current / "report" / "tables" / "mcr_mofr.csv")
    assert window_order(mcr["window"]) == ["1-3", "4-6"]  # report.window=3 over train.epochs=6
    assert set(collect(current)[1]["status"]) == {"completed"}  # finished at train.epochs
    report = _report(current)
    assert "(windows of 3 epochs)" in report and "- Training: 6 epochs, adam lr 0.001," in report
    assert "stratified train/val/test [0.7, 0.1, 0.2] (seed 42)" in report  # a list, as the stored spec has it


# --------------------------------------------------------------------------- window labels and the Pareto front


def test_one_window_label_parser():
    assert window_label(1, 5) == "1-5" and parse_window("1-5") == (1, 5) and parse_window(" 11-12 ") == (11, 12)
    assert window_order(["11-12", "1-5", "6-10", "1-5"]) == ["1-5", "6-10", "11-12"]
    for label in ("1_5", "5", "a-b", "1-5-9", ""):
        with pytest.raises(ValueError, match="epoch window label"):
            parse_window(label)
    epochs = pd.DataFrame([{"backbone": "b", "init": "random", "variant": "baseline", "seed": 0, "arm_id": "a",
                            "epoch": e, "train_acc": e / 10, "val_acc": e / 20, "train_loss": 1.0, "val_loss": 1.0}
                           for e in range(12)])
    labels = mcr_mofr(epochs, window=5)["window"].unique().tolist()
    assert labels == ["1-5", "6-10", "11-11"] and [parse_window(label) for label in labels] == [(1, 5), (6, 10), (11, 11)]


def test_window_labels_are_parsed_only_by_the_one_parser():
    """No other module splits or matches a window label itself."""
    for path in REPORTS.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"""split\(["']-["']\)""", text), path.name
        assert "WINDOW_LABEL" not in text or path.name == "derived.py", path.name


def test_one_pareto_rule_for_the_recommendation_and_the_figures():
    points = pd.DataFrame({"model": list("abcdefg"), "acc": [0.80, 0.70, 0.80, 0.60, 0.90, np.nan, 0.70],
                           "params": [100, 50, 100, 200, 300, 10, 50]})
    front = pareto_optimal(points, {"acc": True, "params": False})
    assert front["model"].tolist() == ["a", "b", "c", "e", "g"]  # d dominated, f without accuracy, twins kept
    by_speed = pareto_optimal(points.rename(columns={"params": "speed"}), {"acc": True, "speed": True})
    assert by_speed["model"].tolist() == ["e"]
    assert pareto_optimal(points.iloc[0:0], {"acc": True, "params": False}).empty

    stats = {column: points[["model", column]].rename(columns={column: "mean"}).dropna() for column in ("acc", "params")}
    assert _pareto(stats["acc"], stats["params"])["model"].tolist() == ["b", "g", "a", "c", "e"]
    summary = points.dropna().rename(columns={"model": "backbone", "acc": "test_acc_mean", "params": "params_trainable"}).assign(
        init="random", variant="baseline", test_acc_std=np.nan, train_images_per_s=1.0)
    assert pareto_front(summary)["backbone"].tolist() == ["b", "g", "a", "c", "e"]


# --------------------------------------------------------------------------- no printing


def test_report_code_does_not_print():
    for path in REPORTS.rglob("*.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
        assert not calls, f"{path.name}:{calls[0].lineno} prints; use logging.getLogger(__name__)"
        assert "sys.stdout" not in path.read_text() and "sys.stderr" not in path.read_text(), path.name
