"""Transfer from a finished arm (the Moravčík thesis, §5.4): ``weights.files.<backbone>: EXPERIMENT_DIR/ARM_ID`` starts
a study's pretrained arms from that arm's tested weights; ``head_only`` retrains the output layer alone, ``fc_only``
the fully connected layers over frozen convolutions, ``reinit_fc`` re-draws those first.

A small finished study runs first (small_cnn, random, one epoch), then a study whose arms start from its arm, on one
class fewer (the output layer is new). Its checkpoints show what the trials really loaded (epoch 0) and what an epoch
of training changed (epoch 1). The refusals are read from preflight's first stage, before anything runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ferbench.backbones import create_backbone, meta_backbone
from ferbench.backbones.conv_fc import conv_fc_backbones, fc_layers, reinit_fc, require_fc_layers
from ferbench.backbones.freezing import FreezePlan, apply_freeze, train_mode
from ferbench.backbones.small_cnn import SmallCNN
from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.study.checkpoints import read_checkpoint
from ferbench.harness.study.layout import SELECTED_WEIGHTS_FILE
from ferbench.harness.study.preflight import PreflightError, run_preflight
from ferbench.harness.study.transfer import _fit_problem, arm_weights, freeze_problems
from ferbench.reports.collect import collect

STUDY = [
    "data.num_images=240", "data.image_size=24", "train.epochs=1", "train.batch_size=32", "train.lr=1e-3",
    "grid.backbone=[small_cnn]", "grid.variant=[baseline]", "grid.exclude=[]", "grid.seed=[0]",
    "split.unlabeled_fraction=0", "report.samples_per_class=0", "resources.cpu=1", "run.max_concurrent=2",
    "weights.source=published", "run.allow_unavailable=false",
]
SOURCE_ARM = "small_cnn_random_baseline_s0"
# head_only, and fc_only with new fully connected layers: the thesis's two transfers
POLICIES = ["grid.train.freeze.policy=[head_only,fc_only]", "grid.train.freeze.reinit_fc=[false,true]",
            "grid.exclude=[{train.freeze.policy: head_only, train.freeze.reinit_fc: true},"
            "{train.freeze.policy: fc_only, train.freeze.reinit_fc: false}]"]
HEAD_ONLY = "small_cnn_pretrained_baseline_policy-head_only_reinit_fc-false_s0"
FC_ONLY = "small_cnn_pretrained_baseline_policy-fc_only_reinit_fc-true_s0"


def _trial_dir(experiment: Path, arm_id: str) -> Path:
    return next(p for p in experiment.glob(f"{arm_id}_*") if (p / "params.json").is_file())


def _checkpoint(experiment: Path, arm_id: str, epoch: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state, history = read_checkpoint(_trial_dir(experiment, arm_id) / f"checkpoint_{epoch:06d}")
    return state["model"], history


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if key.startswith(prefix)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {key for key in before if not torch.equal(before[key], after[key])}


def _run(spec) -> Path:
    """The study's experiment folder, run to its end without the report's figures (the tests read its tables' source,
    ``ferbench.reports.collect``, and an arm is read from grid.json and its checkpoints)."""
    from ferbench.harness.study import engine

    run = engine.resolve_experiment(spec, None, False)
    engine.preflight_study(run)
    engine.start_ray(run)
    engine.write_inputs(run, [])
    engine.tune_arms(run)
    return run.experiment_dir


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """(source experiment, transfer experiment): the finished study, and the study started from its arm."""
    from ferbench.harness.study.checkpoints import trial_statuses

    storage = tmp_path_factory.mktemp("transfer")
    source = _run(load_spec("quick", [*STUDY, "grid.init=[random]", f"run.storage={storage}", "run.name=source"]))
    transfer = _run(load_spec("quick", [*STUDY, *POLICIES, "grid.init=[pretrained]", "data.drop_classes=[disgust]",
                                        f"weights.files.small_cnn={source}/{SOURCE_ARM}", f"run.storage={storage}",
                                        "run.name=transfer"]))
    grid = json.loads((transfer / "ferbench" / "grid.json").read_text())
    assert set(trial_statuses(transfer, grid).values()) == {"completed"}
    return source, transfer


@pytest.fixture(scope="module")
def source_weights(studies) -> dict[str, torch.Tensor]:
    """The source arm's tested weights (train.select=last: its last checkpoint's model), read without the code under test."""
    return _checkpoint(studies[0], SOURCE_ARM, 1)[0]


# --------------------------------------------------------------------------- the transfer itself


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_the_trials_start_from_the_arms_tested_weights_with_a_new_output_layer(studies, source_weights):
    _, transfer = studies
    for arm in (HEAD_ONLY, FC_ONLY):
        start, _ = _checkpoint(transfer, arm, 0)  # epoch 0: the model as built, before any training
        assert _equal(_part(start, "features."), _part(source_weights, "features.")), arm  # BN statistics included
        assert start["classifier.weight"].shape == (6, 160) and source_weights["classifier.weight"].shape == (7, 160)
    head_only_start, _ = _checkpoint(transfer, HEAD_ONLY, 0)
    assert _equal(_part(head_only_start, "neck."), _part(source_weights, "neck."))  # the hidden dense layer loads too


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_the_run_records_the_arm_as_the_weights_source(studies, source_weights):
    source, transfer = studies
    label = f"arm {source.name}/{SOURCE_ARM}"
    manifest = json.loads((transfer / "ferbench" / "manifest.json").read_text())
    assert manifest["weights"]["small_cnn"]["source"] == label
    # no selected_weights.pt (train.select=last): the checkpoint's model part, written as a plain state dict
    assert _equal(torch.load(manifest["weights"]["small_cnn"]["file"], weights_only=True), source_weights)
    assert {arm["weights_source"] for arm in json.loads((transfer / "ferbench" / "grid.json").read_text())} == {label}
    _, trials = collect(transfer)  # the report's trials table: its "weights" column
    assert set(trials["weights_source"]) == {label}


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_head_only_trains_the_output_layer_alone(studies):
    _, transfer = studies
    before, _ = _checkpoint(transfer, HEAD_ONLY, 0)
    after, history = _checkpoint(transfer, HEAD_ONLY, 1)
    assert _changed(before, after) == {"classifier.weight", "classifier.bias"}  # BN running statistics frozen too
    classifier = create_backbone("small_cnn", 6).classifier
    assert {row["params_trainable"] for row in history} == {sum(p.numel() for p in classifier.parameters())}


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_fc_only_trains_the_fully_connected_layers_over_frozen_convolutions(studies):
    _, transfer = studies
    before, _ = _checkpoint(transfer, FC_ONLY, 0)
    after, history = _checkpoint(transfer, FC_ONLY, 1)
    changed = _changed(before, after)
    assert not any(key.startswith("features.") for key in changed)
    assert {"neck.1.weight", "neck.1.bias", "classifier.weight", "classifier.bias"} <= changed
    model = create_backbone("small_cnn", 6)
    assert {row["params_trainable"] for row in history} == {sum(p.numel() for m in (model.neck, model.classifier)
                                                                for p in m.parameters())}


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_reinit_fc_redraws_the_fully_connected_layers(studies, source_weights):
    _, transfer = studies
    start, _ = _checkpoint(transfer, FC_ONLY, 0)
    assert _equal(_part(start, "features."), _part(source_weights, "features."))
    assert not torch.equal(start["neck.1.weight"], source_weights["neck.1.weight"])
    assert not torch.equal(start["neck.1.weight"], _checkpoint(transfer, HEAD_ONLY, 0)[0]["neck.1.weight"])


# --------------------------------------------------------------------------- one-line refusals, before anything runs


def _refusal(tmp_path: Path, *overrides: str) -> str:
    spec = load_spec("quick", [*STUDY, "grid.init=[pretrained]", f"run.storage={tmp_path / 'runs'}", *overrides])
    with pytest.raises(PreflightError) as caught:
        run_preflight(spec)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _copy(studies, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(studies[0], copy)
    return copy


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_a_missing_arm_is_one_line_listing_the_arms(studies, tmp_path):
    line = _refusal(tmp_path, f"weights.files.small_cnn={studies[0]}/small_cnn_random_baseline_s7")
    assert line.startswith("weights.files.small_cnn: ") and "no arm 'small_cnn_random_baseline_s7'" in line
    assert SOURCE_ARM in line
    line = _refusal(tmp_path, f"weights.files.small_cnn={studies[0]}")
    assert "is an experiment; name one of its arms" in line and SOURCE_ARM in line


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_an_incomplete_arm_is_refused(studies, tmp_path):
    copy = _copy(studies, tmp_path)
    shutil.rmtree(_trial_dir(copy, SOURCE_ARM) / "checkpoint_000001")  # stopped after epoch 0
    line = _refusal(tmp_path, f"weights.files.small_cnn={copy}/{SOURCE_ARM}")
    assert line.startswith("weights.files.small_cnn: ") and f"arm {SOURCE_ARM} is incomplete" in line


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_an_arm_of_another_backbone_is_refused(studies, tmp_path):
    line = _refusal(tmp_path, "grid.backbone=[moravcik_base]", f"weights.files.moravcik_base={studies[0]}/{SOURCE_ARM}")
    assert line == (f"weights.files.moravcik_base: arm {studies[0].name}/{SOURCE_ARM} trained small_cnn, not moravcik_base; "
                    "name an arm of moravcik_base, or set it as weights.files.small_cnn (with small_cnn in grid.backbone)")


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_weights_that_do_not_fit_are_refused_naming_the_file(studies, tmp_path):
    """A selected_weights.pt wins over the checkpoint (it is what the test scores are of); here it is of another shape."""
    copy = _copy(studies, tmp_path)
    torch.save(SmallCNN(7, widths=(16, 32, 64)).state_dict(), _trial_dir(copy, SOURCE_ARM) / SELECTED_WEIGHTS_FILE)
    line = _refusal(tmp_path, f"weights.files.small_cnn={copy}/{SOURCE_ARM}")
    assert line.startswith(f"weights.files.small_cnn: arm copy/{SOURCE_ARM} (") and SELECTED_WEIGHTS_FILE in line
    assert "not small_cnn weights" in line and "features.0.weight, [16, 1, 3, 3] in the file, [32, 1, 3, 3]" in line


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_an_arm_trained_under_another_head_is_refused(studies, tmp_path):
    copy = _copy(studies, tmp_path)
    spec_file = copy / "ferbench" / "spec.yaml"
    stored = yaml.safe_load(spec_file.read_text())
    stored["train"]["head"] = "arsirii_au"
    spec_file.write_text(yaml.safe_dump(stored))
    line = _refusal(tmp_path, f"weights.files.small_cnn={copy}/{SOURCE_ARM}")
    assert "was trained with train.head=arsirii_au" in line and "train.head=linear" in line


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_the_trial_folder_names_its_arm_too(studies):
    folder = _trial_dir(studies[0], SOURCE_ARM)
    spec = load_spec("quick", [*STUDY, "grid.init=[pretrained]", f"weights.files.small_cnn={folder}"])
    status = arm_weights(spec, "small_cnn")
    assert status.available and status.source == f"arm {studies[0].name}/{SOURCE_ARM}"
    assert arm_weights(load_spec("quick", STUDY), "small_cnn") is None  # no entry: not an arm


@pytest.mark.e2e  # a source study and a transfer study (the split and re-drawing: the unit tests below)
def test_a_study_under_another_head_feeds_the_arms_convolutions_to_its_head(studies, source_weights):
    """A new study's ``train.head`` (here the Arsirii AU head) takes the arm's convolutions; its neck and output layer
    give way to the head, as for any weight file."""
    spec = load_spec("quick", [*STUDY, "grid.init=[pretrained]", "train.head=arsirii_au",
                               f"weights.files.small_cnn={studies[0]}/{SOURCE_ARM}"])
    model = create_backbone("small_cnn", 6, weights_file=arm_weights(spec, "small_cnn").path, head="arsirii_au")
    features = {key.removeprefix("backbone."): value for key, value in _part(model.state_dict(), "backbone.").items()}
    assert _equal(features, _part(source_weights, "features."))


def test_other_model_options_are_named_in_the_refusal():
    """An arm built with other ``model.*`` options (the tree's 2-block moravcik_final) names the --set that fits it."""
    study, two_blocks = load_spec("quick"), load_spec("quick", ["model.moravcik_blocks=2"])
    weights = meta_backbone("moravcik_final", 7, two_blocks.model.backbone_options()).state_dict()  # shapes are all it reads
    line = _fit_problem(study, two_blocks, "moravcik_final", weights, "arm x/y")
    assert line.startswith("arm x/y: not moravcik_final weights")
    assert line.endswith("the arm was built with model.moravcik_blocks=2: add --set model.moravcik_blocks=2")
    eight_classes = meta_backbone("moravcik_final", 8).state_dict()
    assert _fit_problem(study, study, "moravcik_final", eight_classes, "arm x/y") == ""  # the output layer is new anyway


# --------------------------------------------------------------------------- the convolutional / fully connected split


@pytest.mark.parametrize("name", ["small_cnn", "moravcik_base", "moravcik_final"])
def test_the_cnns_split_into_convolutional_and_fully_connected_layers(name):
    model = meta_backbone(name)
    neck, classifier = fc_layers(model)
    assert neck is model.neck and classifier is model.classifier
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(any(m is c for c in model.features.modules()) for m in convolutions)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.features.modules())
    assert name in conv_fc_backbones()


def test_backbones_without_the_split_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^train.freeze.policy=fc_only needs convolution layers .* resnet50 has no such"):
        require_fc_layers(meta_backbone("resnet50"), "train.freeze.policy=fc_only", "resnet50")
    line = _refusal(tmp_path, "grid.init=[random]", "grid.backbone=[small_cnn,mobilenet_v1]", "train.freeze.policy=fc_only")
    assert line.startswith("train.freeze.policy=fc_only needs") and line.endswith(
        "as moravcik_base, moravcik_final, small_cnn have; mobilenet_v1 has no such split; use head_only or last_k for it")
    headed = freeze_problems(load_spec("quick", ["train.freeze.policy=fc_only", "train.head=arsirii_au",
                                                 "grid.backbone=[small_cnn]"]))
    assert len(headed) == 1 and "use train.head=linear" in headed[0]
    with pytest.raises(SpecError, match="train.freeze.reinit_fc: policy head_only keeps the re-drawn"):
        load_spec("quick", ["train.freeze.policy=head_only", "train.freeze.reinit_fc=true"])


def test_fc_only_on_the_thesis_cnn_trains_dense_layers_and_their_batch_norm():
    torch.manual_seed(0)
    model = create_backbone("moravcik_final", 7)
    apply_freeze(model, FreezePlan("fc_only"), 1)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"neck", "classifier"}
    train_mode(model)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(m.training == any(m is n for n in model.neck.modules()) for m in batch_norms)  # frozen BN: inference mode
    apply_freeze(model, FreezePlan("head_only"), 1)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("random_init", ["torch", "keras"])
def test_reinit_fc_redraws_neck_and_output_layer_from_the_seed(random_init):
    torch.manual_seed(0)
    model = create_backbone("moravcik_final", 7)
    with torch.no_grad():
        model.neck[3].running_mean.fill_(5.0)  # trained statistics of the hidden layer's batch norm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    reinit_fc(model, random_init)
    after = model.state_dict()
    assert _equal(_part(after, "features."), _part(before, "features."))
    assert {"neck.1.weight", "classifier.weight"} <= _changed(before, after)
    assert torch.equal(after["neck.3.running_mean"], torch.zeros(256))
    if random_init == "keras":
        assert torch.equal(after["neck.1.bias"], torch.zeros(256))
    again = create_backbone("moravcik_final", 7)
    again.load_state_dict(before)
    torch.manual_seed(1)
    reinit_fc(again, random_init)
    assert _equal(again.state_dict(), after)  # drawn from torch's RNG: the arm's seed reproduces them
