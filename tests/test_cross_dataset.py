"""Cross-dataset evaluation (``eval.datasets``): an extra test set read in preflight and brought to the training
data's size and channels, its labels mapped per fold from the fold's training part only; a trial's scores on it
against a hand computation; and (e2e) one small study's table, report section and mapping record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import write_image

import ferbench

from ferbench.harness.data.label_mapping import DROPPED
from ferbench.harness.data.splits import load_splits
from ferbench.harness.spec import load_spec
from ferbench.harness.study.engine import preflight_study, resolve_experiment
from ferbench.harness.study.preflight import PreflightError, run_preflight
from ferbench.harness.tasks.classification import SingleLabelClassification
from ferbench.harness.train.augment import InputAdapter
from ferbench.harness.train.cross_eval import CrossEvalSet, evaluate_extra_datasets
from ferbench.reports.cross_dataset import read_mapping_record, results_table

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"
# SynthFER at 24 px, grey: the training data of every study here; one small_cnn arm, one epoch.
STUDY = ["data.num_images=200", "data.image_size=24", "train.epochs=1", "train.batch_size=32", "grid.backbone=[small_cnn]",
         "grid.init=[random]", "grid.variant=[baseline]", "grid.exclude=[]", "grid.seed=[0]", "split.unlabeled_fraction=0",
         "report.samples_per_class=0", "resources.cpu=1"]
FOLDERS = {"anger": 2, "happy": 3, "contempt": 2, "sadness": 1}  # a CK+-like tree: contempt is no FER2013 class


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))


def write_tree(root: Path) -> Path:
    """8×8 colour images, values 0, 40, 80 per class folder: another size and another colour mode than SynthFER's."""
    for folder, count in FOLDERS.items():
        for i in range(count):
            write_image(root / folder / f"{i}.png", value=40 * i, size=(8, 8), colour=True)
    return root


def eval_option(*entries: str) -> str:
    return f"eval.datasets=[{', '.join(entries)}]"


def folder_entry(name: str, root: Path, extra: str = "") -> str:
    return f"{{name: {name}, data: {{format: folder, path: {root}}}{', ' + extra if extra else ''}}}"


# --------------------------------------------------------------------------- preflight


def test_preflight_brings_an_eval_set_to_the_training_form_and_maps_it_per_fold(tmp_path, cache_dir):
    root = write_tree(tmp_path / "ck")
    spec = load_spec("quick", [*STUDY, f"run.storage={tmp_path / 'runs'}", "split.kind=stratified_kfold", "split.k=3",
                               eval_option(folder_entry("mapped", root, "map: {contempt: happy}"),
                                           folder_entry("centred", root, "unmapped: mass_centre, mass_centre: {distance: pixel}"))])
    preflight = run_preflight(spec)
    mapped, centred = preflight.eval_sets
    assert mapped.images.shape == (8, 24, 24) and mapped.images.dtype == np.uint8  # 8×8 RGB → 24×24 grey
    assert (mapped.notes["resized"], mapped.notes["converted"], mapped.notes["converted_to"]) == (8, 8, "grayscale")
    assert mapped.class_names == ("angry", "happy", "sad", "contempt")
    source = preflight.dataset.class_names
    happy = source.index("happy")
    for fold, split in preflight.splits.items():
        labels = mapped.mappings[fold].labels  # contempt → happy, the rest by name
        assert labels.tolist() == [source.index(mapped.class_names[c]) if c != 3 else happy for c in mapped.labels]
        centres = centred.mappings[fold].medoids  # one per training class, from this fold's training part only
        assert sorted(centres) == list(range(len(source)))
        train = split["train"]
        chosen = train[list(centres.values())]
        assert np.isin(chosen, train).all() and not np.isin(chosen, np.concatenate([split["val"], split["test"]])).any()
        assert all(preflight.dataset.labels[index] == c for c, index in zip(centres, chosen))
        contempt = centred.labels == 3
        assert (centred.mappings[fold].labels[~contempt] == labels[~contempt]).all() and (centred.mappings[fold].labels != DROPPED).all()


def test_eval_set_problems_name_their_key_and_the_fix(tmp_path, cache_dir):
    root = write_tree(tmp_path / "ck")
    common = [*STUDY, f"run.storage={tmp_path / 'runs'}"]

    def problems(*entries: str, extra: tuple[str, ...] = ()) -> list[str]:
        with pytest.raises(PreflightError) as err:
            run_preflight(load_spec("quick", [*common, *extra, eval_option(*entries)]))
        return str(err.value).splitlines()

    assert problems(folder_entry("gone", tmp_path / "nowhere"), "{name: nopath, data: {format: ckplus}}") == [
        f"eval.datasets.0.data.path: {tmp_path / 'nowhere'} does not exist; point it at the dataset's file or folder",
        "eval.datasets.1.data.path: format ckplus needs the dataset's file or folder, e.g. eval.datasets.1.data.path=/data/CK+48",
    ]
    assert problems(folder_entry("ck", root, "map: {fear: happy, contempt: disgust}"), extra=("data.drop_classes=[disgust]",)) == [
        "eval.datasets.0.map.fear: ck has no class fear (its classes: angry, happy, sad, contempt); remove it from map",
        "eval.datasets.0.map.contempt: disgust is not a class of the training data (its classes: angry, fear, happy, sad, "
        "surprise, neutral); map contempt to one of them",
    ]
    contempt_only = write_tree(tmp_path / "contempt_only")
    for folder in ("anger", "happy", "sadness"):
        shutil.rmtree(contempt_only / folder)
    (line,) = problems(folder_entry("cont", contempt_only))
    assert line.startswith("eval.datasets.0: none of cont's classes (contempt) is a class of the training data") \
        and line.endswith("map them with eval.datasets.0.map (e.g. {contempt: happy}), or set eval.datasets.0.unmapped: mass_centre")


@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48×48 set is not at {CKPLUS48}")
def test_the_real_ckplus_set_is_scored_whole_with_contempt_as_happy_and_without_contempt_when_dropped(tmp_path, cache_dir):
    spec = load_spec("quick", [*STUDY, "data.image_size=48", f"run.storage={tmp_path / 'runs'}", eval_option(
        f"{{name: ck, data: {{format: ckplus, path: {CKPLUS48}}}, map: {{contempt: happy}}}}",
        f"{{name: ckdrop, data: {{format: ckplus, path: {CKPLUS48}}}}}")])
    mapped, dropped = run_preflight(spec).eval_sets
    assert mapped.images.shape == (981, 48, 48) and mapped.notes["resized"] == mapped.notes["converted"] == 0
    assert mapped.mappings[0].counts() == {"name": 927, "map": 54, "mass_centre": 0, "dropped": 0}
    assert dropped.mappings[0].counts()["dropped"] == 54 and (mapped.images == dropped.images).all()


# --------------------------------------------------------------------------- the trial's scores


class PixelIsClass(torch.nn.Module):
    """Predicts class k for an image of constant value k: ``scale`` × one-hot(k) (a negative scale flips argmax)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.flatten(1).mean(1).round().long().clamp(0, self.num_classes - 1)
        return F.one_hot(k, self.num_classes).float() * self.scale


def fake_trial(fold: int) -> SimpleNamespace:
    # Images of value 0 0 1 2 2 1 predict classes 0 0 1 2 2 1; fold 0's labels drop image 4, fold 1's are all class 2.
    images = np.array([0, 0, 1, 2, 2, 1], np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    eval_set = CrossEvalSet("ext", images, {0: np.array([0, 1, 1, 2, DROPPED, 0]), 1: np.full(6, 2)})
    adapter = InputAdapter(2, 1, "GRAY", (0.0,), (1 / 255,))  # pixel values unchanged
    return SimpleNamespace(
        model=PixelIsClass(3), task=SingleLabelClassification(), arm={"arm_id": "a", "fold": fold},
        eval_kwargs=dict(batch_size=4, adapter=adapter, device=torch.device("cpu")),
        payload=SimpleNamespace(class_names=("angry", "disgust", "fear"), eval_sets=[eval_set]),
    )


def test_a_trial_scores_the_kept_images_of_its_fold_as_computed_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Fold 0 keeps images 0 1 2 3 5: predicted 0 0 1 2 1, true 0 1 1 2 0 → 3 of 5 right. Class 0: tp 1 (image 0), fp 1
    # (image 1), fn 1 (image 5): P = R = F1 = 1/2; class 1: tp 1 (2), fp 1 (5), fn 1 (1): 1/2; class 2: tp 1, F1 1.
    assert evaluate_extra_datasets(fake_trial(0)) == pytest.approx({"cross_ext_acc": 0.6, "cross_ext_macro_f1": 2 / 3})
    stored = json.loads((tmp_path / "cross_dataset.json").read_text())
    (record,) = stored["datasets"]
    assert (record["n_images"], record["n_dropped"], stored["class_names"]) == (5, 1, ["angry", "disgust", "fear"])
    assert record["per_class"]["f1"] == pytest.approx([0.5, 0.5, 1.0]) and record["per_class"]["support"] == [2, 2, 1]
    assert record["per_class"]["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert stored["weights"] == "the model at the trial's end"
    # Fold 1: every image labelled class 2, of which images 3 and 4 are predicted so: 2 of 6.
    assert evaluate_extra_datasets(fake_trial(1))["cross_ext_acc"] == pytest.approx(2 / 6)


def test_the_scores_are_of_the_weights_the_trial_tested_and_the_model_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"scale": torch.tensor(-5.0)}, tmp_path / "selected_weights.pt")  # argmax: the first class not predicted
    trial = fake_trial(1)
    # scale −5: images 0 0 1 2 2 1 → predicted 1 1 0 0 0 0, none of them class 2.
    assert evaluate_extra_datasets(trial)["cross_ext_acc"] == 0.0
    assert json.loads((tmp_path / "cross_dataset.json").read_text())["weights"] == "selected_weights.pt"
    assert float(trial.model.scale.detach()) == 5.0
    assert evaluate_extra_datasets(SimpleNamespace(payload=SimpleNamespace(eval_sets=[]))) == {}


# --------------------------------------------------------------------------- one small study and its report


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One small_cnn arm, one epoch on SynthFER, tested on a CK+-like tree twice: contempt mapped to happy, and
    contempt given the class of the nearest mass centre."""
    from ferbench.harness.study.engine import run_study

    folder = tmp_path_factory.mktemp("cross")
    root = write_tree(folder / "ck")
    spec = load_spec("quick", [*STUDY, f"run.storage={folder}", "run.name=cross", eval_option(
        folder_entry("ckmap", root, "map: {contempt: happy}"), folder_entry("ckcentre", root, "unmapped: mass_centre"))])
    return run_study(spec)


@pytest.mark.e2e  # a whole study (test_tree.py's study, e2e too, scores a tree arm on an eval set)
def test_a_study_tests_every_arm_on_its_eval_sets_and_tables_them(study):
    assert study.statuses == {"small_cnn_random_baseline_s0": "completed"}
    rows = pd.read_csv(study.report_dir / "tables" / "cross_dataset.csv")
    assert list(rows["dataset"]) == ["ckmap", "ckcentre"] and list(rows["n_images"]) == [8, 8]
    assert list(rows.columns[:5]) == ["arm_id", "backbone", "init", "variant", "seed"]
    assert [c for c in rows.columns if c.startswith("f1_")] == [f"f1_{c}" for c in ("angry", "disgust", "fear", "happy", "sad",
                                                                                     "surprise", "neutral")]
    (trial_dir,) = [p for p in study.experiment_dir.iterdir() if p.name.startswith("small_cnn")]
    last = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()][-1]  # the trial's last row
    assert last["epoch"] == 1 and last["cross_ckmap_acc"] == pytest.approx(rows["acc"][0])
    assert last["cross_ckcentre_macro_f1"] == pytest.approx(rows["macro_f1"][1])
    written = (study.report_dir / "tables" / "cross_dataset.csv").read_text()
    assert ferbench.load(study.experiment_dir).cross_dataset.to_csv(index=False) == written  # the Python API's table


@pytest.mark.e2e  # a whole study (test_tree.py's study, e2e too, scores a tree arm on an eval set)
def test_the_mapping_record_holds_each_images_label_and_reproduces_on_the_stored_splits(study):
    record = read_mapping_record(study.experiment_dir / "ferbench" / "cross_dataset_mapping.json")
    ckmap, ckcentre = record["datasets"]
    training = record["training_classes"]
    assert ckmap["class_names"] == ["angry", "happy", "sad", "contempt"] and ckmap["class_counts"] == [2, 3, 1, 2]
    assert ckmap["folds"]["0"]["how"] == {"name": 6, "map": 2, "mass_centre": 0, "dropped": 0}
    assert ckmap["folds"]["0"]["confusion"][3][training.index("happy")] == 2  # contempt → happy
    centre = ckcentre["folds"]["0"]
    assert centre["how"]["mass_centre"] == 2 and sum(centre["confusion"][3]) == 2 and centre["confusion"][3][-1] == 0
    splits = load_splits(study.experiment_dir / "ferbench" / "splits.npz")
    assert {c["index"] for c in centre["mass_centres"].values()} <= set(splits[0]["train"].tolist())
    # --resume maps again, on the stored splits: the same labels as the record's (nothing left to train here)
    resumed = resolve_experiment(None, study.experiment_dir, resume=True)
    preflight_study(resumed)
    assert resumed.to_run == [] and resumed.preflight.eval_sets[1].mappings[0].labels.tolist() == centre["labels"]


@pytest.mark.e2e  # a whole study (test_tree.py's study, e2e too, scores a tree arm on an eval set)
def test_the_report_has_a_cross_dataset_section_with_the_mapping_and_the_results(study):
    report = (study.report_dir / "report.md").read_text()
    section = report.split("## Cross-dataset evaluation", 1)[1].split("\n## ", 1)[0]
    assert "### ckmap" in section and "### ckcentre" in section and "### Results" in section
    assert "- Mapped (`map`): contempt → happy (2 images)" in section
    assert "- No training class: contempt (2 images): each given the class of its nearest mass centre (histogram difference)" in section
    assert "| label | angry | disgust | fear | happy | sad | surprise | neutral |" in section  # ckcentre's mapping
    assert "| small_cnn_random_baseline | 1 |" in section
    html = (study.report_dir / "report.html").read_text()
    assert "Cross-dataset evaluation" in html and "ckcentre" in html


@pytest.mark.e2e  # a whole study (test_tree.py's study, e2e too, scores a tree arm on an eval set)
def test_a_damaged_trial_file_is_named_and_the_rest_of_the_section_stands(study, tmp_path):
    from ferbench.reports import build_report

    copy = tmp_path / "cross"
    shutil.copytree(study.experiment_dir, copy)
    (trial_dir,) = [p for p in copy.iterdir() if p.name.startswith("small_cnn")]
    (trial_dir / "cross_dataset.json").write_text('{"class_names": ["angry"], "datasets": [{"name": "x"}]}')
    report = (build_report(copy) / "report.md").read_text()
    section = report.split("## Cross-dataset evaluation", 1)[1].split("\n## ", 1)[0]
    assert "No arm has been scored on them yet." in section and "### ckmap" in section
    assert f"- `small_cnn_random_baseline_s0`: damaged: {trial_dir.name}/cross_dataset.json" in section


def test_results_are_means_over_seeds_with_an_interval_from_two():
    rows = pd.DataFrame({"arm_id": ["m_s0", "m_s1", "m_s0", "m_s1"], "backbone": "m", "init": "random", "variant": "baseline",
                         "seed": [0, 1, 0, 1], "dataset": ["a", "a", "b", "b"], "n_images": 4, "n_dropped": 0,
                         "acc": [0.5, 0.7, 0.2, np.nan], "macro_f1": [0.4, 0.6, 0.1, np.nan]})
    table = results_table(rows)
    # a: mean 0.6, s = 0.1414, t(0.975, 1) = 12.706 → half-width 12.706 · 0.1414 / √2 = 1.271
    assert table.to_dict("records") == [{"model": "m_random_baseline", "seeds": 2, "a acc": "0.600 [-0.671, 1.871]",
                                         "a macro F1": "0.500 [-0.771, 1.771]", "b acc": "0.200 (n = 1)",
                                         "b macro F1": "0.100 (n = 1)"}]
