"""Any spec setting as a grid axis (``grid.train.lr: [1e-4, 3e-4]``): parsing in every spelling, one-line
errors, arm names, each trial training with its arm's value, and the report pairing arms within the same
values of the extra axes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import SMALL

from ferbench.harness.spec import SpecError, StudySpec, arm_spec_data, axis_names, load_spec, settings_label
from ferbench.reports.derived import model_names, paired_differences, seed_summary, smelyakov_tables
from ferbench.reports.recommendation import render_recommendation

LR_AXIS = {"train.lr": [0.0001, 0.0003]}


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec("quick", list(overrides))
    return str(caught.value).splitlines()


# --------------------------------------------------------------------------- parsing


def test_plain_grids_keep_their_arm_ids_and_stored_form():
    """Stored experiments resume and report by these ids: a grid without extra axes must not change them."""
    quick = load_spec("demo")  # FERBench 0.1's quick study
    assert [arm["arm_id"] for arm in quick.arms()] == [
        "small_cnn_random_baseline_s0", "small_cnn_pretrained_baseline_s0", "small_cnn_pretrained_pseudo_label_s0",
        "mobilenet_v1_random_baseline_s0", "mobilenet_v1_pretrained_baseline_s0",
    ]
    assert all("settings" not in arm for arm in quick.arms())
    assert quick.grid.axes == {}
    assert set(quick.model_dump(mode="json")["grid"]) == {"backbone", "init", "variant", "seed", "exclude"}
    folds = load_spec("quick", ["split.kind=subject_kfold", "split.k=3", "split.folds=[1]", "grid.backbone=[small_cnn]",
                                "grid.variant=[baseline]", "grid.exclude=[]"])
    assert [arm["arm_id"] for arm in folds.arms()] == ["small_cnn_random_baseline_s0_f1", "small_cnn_pretrained_baseline_s0_f1"]


def test_nested_dotted_and_set_spellings_give_one_axis(tmp_path):
    nested, dotted = tmp_path / "nested.yaml", tmp_path / "dotted.yaml"
    base = {"grid": {"backbone": ["small_cnn"], "variant": ["baseline"]}}
    # "1e-4" without a dot is text to YAML 1.1: the setting's own validation makes it the float
    nested.write_text(yaml.safe_dump({"grid": {**base["grid"], "train": {"lr": ["1e-4", 3e-4]}}}))
    dotted.write_text(yaml.safe_dump({"grid": {**base["grid"], "train.lr": [1e-4, "3e-4"]}}))
    specs = [load_spec(str(nested)), load_spec(str(dotted)),
             load_spec("quick", ["grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline]",
                                 "grid.exclude=[]", "grid.train.lr=[1e-4,3e-4]"])]
    for spec in specs:
        assert spec.grid.axes == LR_AXIS
        assert [arm["settings"] for arm in spec.arms()] == [{"train.lr": 0.0001}, {"train.lr": 0.0003}]
    # the stored form is the dotted one, and reads back as the same spec (what --resume reads)
    stored = yaml.safe_load(yaml.safe_dump(specs[2].model_dump(mode="json")))
    assert stored["grid"]["train.lr"] == [0.0001, 0.0003]
    assert StudySpec.model_validate(stored).arms() == specs[2].arms()
    # --set after the study file replaces the file's axis, whichever spelling the file used
    again = load_spec(str(dotted), ["grid.train.lr=[1e-3]"])
    assert again.grid.axes == {"train.lr": [0.001]}


def test_arm_names_say_the_values_and_stay_distinct():
    spec = load_spec("quick", ["grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline]", "grid.exclude=[]",
                               "grid.seed=[0,1]", "grid.train.lr=[1e-4,2.5e-4]", "grid.train.freeze.policy=[none,head_only]",
                               "grid.train.augment.enabled=[true]", "grid.train.epochs=[2]"])
    ids = [arm["arm_id"] for arm in spec.arms()]
    assert ids[:2] == ["small_cnn_random_baseline_lr1e-04_policy-none_enabled-true_epochs2_s0",
                       "small_cnn_random_baseline_lr1e-04_policy-none_enabled-true_epochs2_s1"]
    assert "small_cnn_random_baseline_lr2.5e-04_policy-head_only_enabled-true_epochs2_s1" in ids
    assert len(set(ids)) == len(ids) == 8
    # two axes ending in the same name keep as many path elements as tell them apart
    assert axis_names(["train.freeze.k", "pseudo_label.k", "train.lr"]) == {
        "train.freeze.k": "freeze-k", "pseudo_label.k": "pseudo_label-k", "train.lr": "lr"}
    assert settings_label({"train.freeze.k": 4, "pseudo_label.k": 4}) == "freeze-k4_pseudo_label-k4"
    assert settings_label({"train.lr": 0.5, "model.vggface_descriptor": "fc8", "pseudo_label.per_class_cap": None}) == \
        "lr0.5_vggface_descriptor-fc8_per_class_cap-none"


def test_exclude_rules_name_extra_axes_in_any_spelling():
    common = ["grid.backbone=[small_cnn]", "grid.variant=[baseline]", "grid.train.lr=[1e-4,3e-4]"]
    for rule in ("[{init: pretrained, train.lr: 1e-4}]", "[{init: pretrained, train: {lr: 0.0001}}]"):
        spec = load_spec("quick", [*common, f"grid.exclude={rule}"])
        assert [arm["arm_id"] for arm in spec.arms()] == [
            "small_cnn_random_baseline_lr1e-04_s0", "small_cnn_random_baseline_lr3e-04_s0",
            "small_cnn_pretrained_baseline_lr3e-04_s0"]
    assert _problems(*common, "grid.exclude=[{train.momentum: 0.5}]") == [
        "grid.exclude.0: each rule names grid axes ['backbone', 'init', 'variant', 'seed', 'train.lr'], "
        "got {'train.momentum': 0.5}"]


def test_each_arm_spec_holds_its_values():
    spec = load_spec("quick", ["grid.backbone=[small_cnn]", "grid.variant=[baseline]", "grid.train.lr=[1e-4,3e-4]",
                               "grid.train.freeze.policy=[none,head_only]",
                               "grid.exclude=[{init: pretrained, train.freeze.policy: head_only}]"])
    data = spec.model_dump(mode="json")
    for arm in spec.arms():
        own = StudySpec.model_validate(arm_spec_data(data, arm["settings"]))
        assert (own.train.lr, own.train.freeze.policy) == (arm["settings"]["train.lr"], arm["settings"]["train.freeze.policy"])
        assert own.grid.axes == {}
        assert own.train.epochs == spec.train.epochs and own.split == spec.split
    head_only = StudySpec.model_validate(arm_spec_data(data, {"train.lr": 0.0001, "train.freeze.policy": "head_only"}))
    assert [arm["init"] for arm in head_only.arms()] == ["random"]  # the rule, resolved for these values


# --------------------------------------------------------------------------- errors


def test_invalid_values_name_the_axis_entry():
    assert _problems("grid.train.lr=[1e-4,-1]") == ["grid.train.lr.1: Input should be greater than 0 (got -1)"]
    (line,) = _problems("grid.train.freeze.policy=[none,frozen]")
    assert line.startswith("grid.train.freeze.policy.1: Input should be 'none', 'last_k'") and "'frozen'" in line
    assert _problems("grid.train.lr=[1e-4,0.0001]") == ["grid.train.lr: values must be unique, got ['1e-4', 0.0001]"]
    assert _problems("grid.train.lr=1e-4") == [
        "grid.train.lr: an axis takes a list of values, e.g. grid.train.lr: [0.0001, …]; got 0.0001"]
    # valid alone, not beside the study's other settings: named by the value, checked arm by arm
    (line,) = _problems("grid.train.freeze.policy=[none,keras_last_k]", "grid.train.lr=[1e-4,1e-3]")
    assert line.startswith("grid.train.freeze.policy.1: train.freeze.policy: keras_last_k needs a recorded Keras layer "
                           "list, and there is none for small_cnn")


def test_unknown_and_meaningless_axes_are_refused_in_one_line_each():
    (line,) = _problems("grid.train.lrr=[1e-4]")
    assert line.startswith("grid.train.lrr: unknown setting 'train.lrr'")
    assert "did you mean grid.train.lr?" in line and "check the spelling" in line
    (line,) = _problems("grid.seeds=[0,1]")
    assert line.startswith("grid.seeds: unknown setting") and "did you mean grid.seed?" in line
    refused = _problems("grid.run.name=[a,b]", "grid.grid.seed=[1]", "grid.study=[x]", "grid.data.seed=[1,2]",
                        "grid.split.folds=[[0],[1]]", "grid.weights.source=[published]", "grid.resources.cpu=[1,2]",
                        "grid.pseudo_label.unlabeled_path=[x]", "grid.train.freeze=[1]")
    assert [line.split(":")[0] for line in refused] == [
        "grid.run.name", "grid.grid.seed", "grid.study", "grid.data.seed", "grid.split.folds", "grid.weights.source",
        "grid.resources.cpu", "grid.pseudo_label.unlabeled_path", "grid.train.freeze"]
    assert all("cannot be a grid axis" in line for line in refused[:-1])
    assert "grid.backbone, grid.init, grid.variant, grid.seed" in refused[1]
    assert refused[-1] == ("grid.train.freeze: train.freeze is a section, not a setting; an axis is one of its "
                           "settings, e.g. grid.train.freeze.policy")
    # synth-identity weights are pretrained once per study, at the study's input size
    (line,) = _problems("grid.train.input_size=[data,32]", "weights.source=synth-identity")
    assert line.startswith("grid.train.input_size.1: synth-identity weights of small_cnn, timm:regnetx_002 are pretrained once")


# --------------------------------------------------------------------------- report tables, pure


def _trials(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["arm_id", "backbone", "init", "variant", "train.lr", "seed", "status", "test_acc"])


def test_pairs_hold_the_extra_axes_fixed():
    """Pretrained − random within each lr: pairing across lr values would mix a +0.30 and a −0.10 effect."""
    rows = []
    for lr, effect in ((1e-3, 0.30), (1e-9, -0.10)):
        for seed, noise in enumerate((0.0, 0.01, -0.01)):
            base = 0.4 + (0.2 if lr == 1e-3 else 0.0) + noise
            for init, acc in (("random", base), ("pretrained", base + effect + noise / 2)):
                rows.append((f"small_cnn_{init}_baseline_lr{lr}_s{seed}", "small_cnn", init, "baseline", lr, seed, "completed", acc))
    trials = _trials(rows)
    diffs = paired_differences(trials, "test_acc")
    assert list(diffs.columns[:5]) == ["comparison", "backbone", "variant", "init", "train.lr"]
    assert diffs["train.lr"].tolist() == [1e-3, 1e-9]
    assert diffs["n_pairs"].tolist() == [3, 3] and diffs["n_unpaired"].tolist() == [0, 0]
    assert diffs["mean_diff"].to_numpy() == pytest.approx([0.30, -0.10])
    assert diffs["claim"].tolist() == [True, True]
    summary = seed_summary(trials, ["test_acc"])
    assert summary[["init", "train.lr", "n"]].values.tolist() == [
        ["random", 1e-3, 3], ["pretrained", 1e-3, 3], ["random", 1e-9, 3], ["pretrained", 1e-9, 3]]
    assert model_names(summary).tolist() == ["small_cnn_random_baseline_lr1e-03", "small_cnn_pretrained_baseline_lr1e-03",
                                             "small_cnn_random_baseline_lr1e-09", "small_cnn_pretrained_baseline_lr1e-09"]
    text = render_recommendation(summary, diffs, None, trials)
    assert "pretraining helps `small_cnn_lr1e-03` (+0.300 test acc" in text
    assert "pretraining hurts `small_cnn_lr1e-09` (-0.100 test acc" in text


def test_variant_pairs_with_the_baseline_of_the_same_values():
    rows = [(f"a{i}", "small_cnn", "random", variant, lr, seed, "completed", acc)
            for i, (variant, lr, seed, acc) in enumerate(
                [(v, lr, s, 0.5 + (0.1 if v == "balanced" else 0) + (0.2 if lr == 1e-3 else 0) + 0.01 * s)
                 for v in ("baseline", "balanced") for lr in (1e-3, 1e-4) for s in range(3)])]
    rows = [row for row in rows if not (row[3] == "balanced" and row[4] == 1e-4)]  # excluded from the grid
    diffs = paired_differences(_trials(rows), "test_acc")
    assert diffs[["comparison", "train.lr", "n_pairs"]].values.tolist() == [["balanced − baseline", 1e-3, 3]]
    assert diffs["mean_diff"].iloc[0] == pytest.approx(0.1)


def test_smelyakov_tables_keep_models_apart_by_axis_values():
    mcr = pd.DataFrame([{"backbone": "small_cnn", "init": "random", "variant": "baseline", "train.lr": lr, "seed": seed,
                         "arm_id": f"x{lr}{seed}", "metric": "accuracy", "kind": "MCR", "window": "1-1", "value": value}
                        for lr, values in ((1e-3, (0.2, 0.4)), (1e-9, (0.0, 0.0))) for seed, value in enumerate(values)])
    table = smelyakov_tables(mcr)["accuracy-based MCR"]
    assert table.index.tolist() == ["small_cnn_random_lr1e-03", "small_cnn_random_lr1e-09"]
    assert table["1-1"].tolist() == pytest.approx([0.3, 0.0])


# --------------------------------------------------------------------------- a tiny study


@pytest.fixture(scope="module")
def lr_study(tmp_path_factory):
    """small_cnn pretrained (a weights file written here) and random × lr 1e-3 and 1e-9, 1 epoch, seed 0."""
    import torch

    from ferbench.backbones import create_backbone
    from ferbench.harness.study.engine import run_study

    folder = tmp_path_factory.mktemp("grid-axes")
    torch.manual_seed(7)
    weights = folder / "small_cnn.pth"
    torch.save(create_backbone("small_cnn", 7).state_dict(), weights)
    spec = load_spec("quick", [*SMALL, "grid.init=[pretrained,random]", "grid.seed=[0]", "train.epochs=1",
                               "grid.train.lr=[1e-3,1e-9]", f"weights.files.small_cnn={weights}",
                               "run.max_concurrent=1", f"run.storage={folder}", "run.name=lr-axis"])  # one worker: one torch import
    outcome = run_study(spec)
    assert set(outcome.statuses.values()) == {"completed"}, outcome.statuses
    return outcome, weights


@pytest.mark.e2e  # a whole study (pairing itself: the tests above)
def test_each_trial_trains_with_its_arms_value(lr_study):
    from ferbench.harness.study.checkpoints import checkpoint_dirs, read_checkpoint

    outcome, weights = lr_study
    experiment = outcome.experiment_dir
    grid = json.loads((experiment / "ferbench" / "grid.json").read_text())
    assert {arm["arm_id"]: arm["settings"] for arm in grid} == {
        f"small_cnn_{init}_baseline_lr{name}_s0": {"train.lr": lr}
        for init in ("pretrained", "random") for name, lr in (("1e-03", 1e-3), ("1e-09", 1e-9))}
    file_weights = torch_load(weights)
    moved = {}
    for arm in grid:
        (folder,) = experiment.glob(f"{arm['arm_id']}_*")
        assert json.loads((folder / "params.json").read_text())["arm"]["settings"] == arm["settings"]  # Tune's record
        state, history = read_checkpoint(checkpoint_dirs(folder)[0])
        assert {row["lr"] for row in history} == {arm["settings"]["train.lr"]}  # the optimizer's lr, every epoch
        if arm["init"] == "pretrained":  # how far the trunk moved from the file's weights in one epoch
            moved[arm["settings"]["train.lr"]] = max(
                float((state["model"][key] - value).abs().max()) for key, value in file_weights.items()
                if not key.startswith("classifier") and value.is_floating_point() and "running" not in key)
    assert moved[1e-9] < 1e-6 < 1e-4 < moved[1e-3], moved
    # --resume reads the stored spec and grid back: nothing left to train, the axis as it was
    from ferbench.harness.study.engine import resume_plan
    from ferbench.harness.study.experiment import read_json, read_stored_spec

    assert read_stored_spec(experiment).grid.axes == {"train.lr": [1e-3, 1e-9]}
    assert resume_plan(experiment, read_json(experiment / "ferbench" / "grid.json")) == []


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.e2e  # a whole study (pairing itself: the tests above)
def test_report_pairs_pretrained_with_random_within_each_lr(lr_study):
    outcome, _ = lr_study
    tables = outcome.report_dir / "tables"
    trials = pd.read_csv(tables / "trials.csv")
    epochs = pd.read_csv(tables / "epochs.csv")
    assert list(trials.columns[:7]) == ["trial_id", "arm_id", "backbone", "init", "variant", "seed", "train.lr"]
    assert "train.lr" in epochs.columns and set(pd.read_csv(tables / "mcr_mofr.csv")["train.lr"]) == {1e-3, 1e-9}
    summary = pd.read_csv(tables / "summary.csv")
    assert sorted(set(zip(summary["init"], summary["train.lr"]))) == [
        ("pretrained", 1e-9), ("pretrained", 1e-3), ("random", 1e-9), ("random", 1e-3)]
    diffs = pd.read_csv(tables / "differences.csv")
    accuracy = diffs[diffs["metric"] == "test_acc"].set_index("train.lr")
    assert sorted(accuracy.index) == [1e-9, 1e-3] and set(accuracy["n_pairs"]) == {1}
    acc = trials.set_index(["init", "train.lr"])["test_acc"]
    for lr in (1e-3, 1e-9):
        assert accuracy.loc[lr, "mean_diff"] == pytest.approx(acc[("pretrained", lr)] - acc[("random", lr)])
    report = (outcome.report_dir / "report.md").read_text()
    assert "| comparison | backbone | variant / init | train.lr | metric |" in report
    assert "× train.lr \\[1e-03, 1e-09\\] × seed" in report  # the Study section's grid (Markdown-escaped)
    assert "| pretrained − random | small_cnn | baseline | 1e-09 | test_acc | 1 |" in report  # the value, not 0.000
    assert "| small_cnn_pretrained_lr1e-03 |" in report and "| small_cnn_random_lr1e-09 |" in report
    assert np.isfinite(trials["test_acc"]).all()
    samples = pd.read_csv(tables / "sample_predictions.csv")  # a model per lr: seeds pooled, lr values never
    assert set(zip(samples["model"], samples["train.lr"])) == {
        (f"small_cnn_{init}_baseline_lr{name}", lr) for init in ("pretrained", "random") for name, lr in (("1e-03", 1e-3), ("1e-09", 1e-9))}
