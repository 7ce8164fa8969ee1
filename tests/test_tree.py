"""Decision trees of CNNs (the Moravčík thesis, §5.3): the structure checks, routing on a hand-made 4-class case,
the spec's tree section and the built-in studies; e2e: a real tree study on SynthFER whose routed test scores are
recomputed from its stored node weights, and a tree trial that fails inside a node and resumes there with identical
results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import only_trial_folder
from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.backbones.tree import CnnTree, route, tree_layout
from ferbench.harness.data.loaders import load_dataset
from ferbench.harness.data.splits import load_splits
from ferbench.harness.spec import SpecError, StudySpec, load_spec
from ferbench.harness.study.engine import run_study
from ferbench.harness.study.layout import TEST_PREDICTIONS_FILE, TREE_NODES_FILE
from ferbench.harness.study.preflight import tree_class_problems
from ferbench.harness.train.augment import InputAdapter
from ferbench.harness.train.loop import predict
from ferbench.harness.train.trial import FAIL_MARKER_ENV, FAIL_ONCE_ENV
from ferbench.harness.train.tree_trial import node_payload, node_targets
from ferbench.harness.tree_spec import TreeNodeSpec, node_spec_data

# The thesis's tree (Fig. 5.1) over FER2013's classes.
THESIS = [("nn1", [["fear"], ["angry", "disgust", "happy", "sad", "surprise", "neutral"]]),
          ("nn2", [["angry", "sad", "neutral"], ["disgust", "happy", "surprise"]]),
          ("nn3", [["angry"], ["sad"], ["neutral"]]),
          ("nn4", [["disgust"], ["happy"], ["surprise"]])]
# A hand-made 4-class tree: the root splits {a} from {b, c, d}; "m" splits {b} from {c, d}; "l" splits c from d.
SMALL = [("root", [["a"], ["b", "c", "d"]]), ("m", [["b"], ["c", "d"]]), ("l", [["c"], ["d"]])]
CLASSES = ("a", "b", "c", "d")
TREE = ("trees.t={nodes: [{name: nn1, groups: [[fear], [angry, disgust, happy, sad, surprise, neutral]], backbone: small_cnn, "
        "variant: balanced}, {name: nn2, groups: [[angry, sad, neutral], [disgust, happy, surprise]], backbone: small_cnn}, "
        "{name: nn3, groups: [[angry], [sad], [neutral]], backbone: small_cnn, train: {epochs: 1}}, "
        "{name: nn4, groups: [[disgust], [happy], [surprise]], backbone: small_cnn, train: {augment: {rotation_deg: 5}}}]}")
STUDY = ["data.num_images=400", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "train.lr=1e-3",
         "grid.backbone=[small_cnn,tree:t]", "grid.variant=[baseline]", "grid.exclude=[]", "grid.seed=[0]", "grid.init=[random]",
         "split.unlabeled_fraction=0", "report.samples_per_class=0", "resources.cpu=1", "run.max_concurrent=2", TREE,
         "eval.datasets=[{name: other, data: {format: synthfer, num_images: 70, image_size: 24, seed: 5}}]"]
TREE_ARM = "tree-t_random_baseline_s0"


# --- structure and routing ------------------------------------------------------------------------


def test_the_thesis_tree_has_its_root_children_and_a_path_to_every_class():
    layout = tree_layout(THESIS)
    assert layout.root == "nn1"
    assert layout.children == {("nn1", 1): "nn2", ("nn2", 0): "nn3", ("nn2", 1): "nn4"}
    paths = layout.paths()
    assert paths["fear"] == [("nn1", 0)]
    assert paths["sad"] == [("nn1", 1), ("nn2", 0), ("nn3", 1)]
    assert paths["surprise"] == [("nn1", 1), ("nn2", 1), ("nn4", 2)]
    assert len(paths) == 7


@pytest.mark.parametrize("nodes, expected", [
    ([("r", [["a"], ["b", "c"]])], "group b+c has no node that splits it"),
    ([("r", [["a"], ["b"]]), ("s", [["c"], ["d"]])], "a tree has one root (a node no group leads to); r, s found"),
    ([("r", [["a"], ["a", "b"]])], "a stands in more than one group"),
    ([("r", [["a", "b"]])], "a node splits its classes into at least 2 groups; it has 1"),
    ([("r", [["a"], ["b", "c"]]), ("r", [["b"], ["c"]])], "node name 'r' is used 2 times"),
])
def test_a_broken_tree_is_refused_naming_the_node(nodes, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        tree_layout(nodes, "trees.x.nodes")


def _probabilities() -> dict[str, torch.Tensor]:
    # Three images: image 0 leaves at the root (a), image 1 goes root → m → b, image 2 root → m → l → d.
    return {"root": torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]]),
            "m": torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.3, 0.7]]),
            "l": torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.25, 0.75]])}


def test_hard_routing_follows_the_most_probable_group_and_gives_the_deciding_nodes_probabilities():
    out = route(tree_layout(SMALL), CLASSES, _probabilities(), "hard")
    # image 0: the root decides a (its only single-class group: probability 1); image 1: m decides b (its only
    # single-class group); image 2: l decides d with l's own probabilities over c and d.
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.25, 0.75]])
    assert torch.allclose(out, expected)
    assert out.argmax(1).tolist() == [0, 1, 3]


def test_soft_routing_multiplies_the_group_probabilities_along_each_path():
    out = route(tree_layout(SMALL), CLASSES, _probabilities(), "soft")
    # image 2: a = 0.1; b = 0.9·0.3; c = 0.9·0.7·0.25; d = 0.9·0.7·0.75
    assert torch.allclose(out[2], torch.tensor([0.1, 0.27, 0.1575, 0.4725]))
    assert torch.allclose(out.sum(1), torch.ones(3))
    # image 1: a soft tree can disagree with the hard one (b = 0.6·0.8 = 0.48 vs a = 0.4)
    assert out[1].argmax().item() == 1


class _Fixed(torch.nn.Module):
    """A node that outputs given logits whatever the image."""

    def __init__(self, probabilities: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(probabilities.log())

    def get_classifier(self):
        return torch.nn.Identity()

    def forward(self, x):
        return self.logits[: len(x)]


def test_the_tree_module_returns_the_log_of_the_routed_probabilities():
    tree = CnnTree(tree_layout(SMALL), CLASSES, {name: _Fixed(p) for name, p in _probabilities().items()}, "soft")
    out = tree(torch.zeros(3, 1, 4, 4))
    assert torch.allclose(out.exp(), route(tree_layout(SMALL), CLASSES, _probabilities(), "soft"), atol=1e-6)
    assert torch.allclose(torch.softmax(out, 1), out.exp(), atol=1e-6)


# --- the spec --------------------------------------------------------------------------------------


def test_a_node_trains_with_its_own_settings_over_the_studys():
    spec = load_spec("quick", STUDY)
    node = TreeNodeSpec(name="n", groups=[["a"], ["b"]], backbone="moravcik_final", model={"moravcik_blocks": 2},
                        train={"epochs": 7, "augment.shear_deg": 10}, variant="balanced")
    data = node_spec_data(spec.model_dump(mode="json"), node, "baseline")
    assert data["model"]["moravcik_blocks"] == 2 and data["train"]["epochs"] == 7
    assert data["train"]["augment"]["shear_deg"] == 10 and data["train"]["augment"]["rotation_deg"] == spec.train.augment.rotation_deg
    assert data["train"]["lr"] == 1e-3  # the study's, kept
    assert data["grid"]["backbone"] == ["moravcik_final"] and data["grid"]["variant"] == ["balanced"] and data["trees"] == {}


@pytest.mark.parametrize("overrides, expected", [
    (["grid.backbone=[tree:other]"], "grid.backbone: tree:other names no tree; define it under trees.other"),
    (["grid.init=[random,pretrained]"], "grid: tree:t trains from random init; add grid.exclude"),
    (["grid.variant=[pseudo_label]", "split.unlabeled_fraction=0.1"], "a tree's nodes train as baseline or balanced"),
    ([TREE.replace("train: {epochs: 1}", "train: {lr: -1}")], r"trees.t.nodes\[2\] \(nn3\): train.lr: Input should be greater than 0"),
    ([TREE.replace("variant: balanced", "backbone: vggface", 1).replace("backbone: small_cnn, backbone", "backbone")],
     r"trees.t.nodes: every node of a tree takes the same input"),
])
def test_a_bad_tree_study_is_refused_in_one_line(overrides, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec("quick", [*STUDY, *overrides])


def test_the_studys_exclude_rules_leave_the_nodes_alone():
    # the rule leaves out the single small_cnn arm; the tree's small_cnn nodes still train
    spec = load_spec("quick", [*STUDY, "grid.exclude=[{backbone: small_cnn}]"])
    assert [arm["arm_id"] for arm in spec.arms()] == [TREE_ARM]


def test_preflight_refuses_a_tree_whose_classes_are_not_the_datasets():
    spec = load_spec("quick", STUDY)
    assert tree_class_problems(spec, ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")) == []
    [line] = tree_class_problems(spec, ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt"))
    assert line.startswith("trees.t: the tree's classes are not the dataset's") and "no node leads to contempt" in line


def test_a_node_sees_only_its_classes_images_with_its_groups_as_targets():
    labels = np.array([0, 1, 2, 3, 1, 2])  # classes a b c d
    node = TreeNodeSpec(name="m", groups=[["b"], ["c", "d"]], backbone="small_cnn")
    targets, member = node_targets(labels, CLASSES, node)
    assert member.tolist() == [False, True, True, True, True, True]
    assert targets[member].tolist() == [0, 1, 1, 0, 1]


# --- a real tree study ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("tree")
    return run_study(load_spec("quick", [*STUDY, f"run.storage={storage}", "run.name=tree"]))


def _rows(outcome) -> pd.DataFrame:
    epochs = pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")
    return epochs[epochs["arm_id"] == TREE_ARM].sort_values("epoch").reset_index(drop=True)


@pytest.mark.e2e  # a whole study (its parts: the tests above)
def test_each_node_trains_in_turn_with_its_own_epochs_and_variant(study):
    assert study.statuses == {"small_cnn_random_baseline_s0": "completed", TREE_ARM: "completed"}
    rows = _rows(study)
    # epoch 0 (evaluation) and train.epochs per node; nn3 trains 1 epoch; then the row of the whole tree
    assert rows["node"].tolist() == ["nn1"] * 3 + ["nn2"] * 3 + ["nn3"] * 2 + ["nn4"] * 3 + ["tree"]
    assert rows["epoch"].tolist() == list(range(12))
    trained = rows[rows["round_epoch"] > 0]
    nn1, nn2 = (trained[trained["node"] == n] for n in ("nn1", "nn2"))
    # nn1 is balanced: an epoch visits as many fear as other images (more than its training part holds)
    assert (nn1["train_size"] == nn1["train_size"].iloc[0]).all()
    balanced = json.loads((only_trial_folder(study, TREE_ARM) / "result.json").read_text().splitlines()[1])
    assert balanced["node"] == "nn1" and balanced["epoch_images"] != balanced["train_size"]
    assert nn2["train_size"].max() < nn1["train_size"].min()
    assert rows["node_test_acc"].notna().tolist() == [False, False, True, False, False, True, False, True, False, False, True, False]


@pytest.mark.e2e  # a whole study (its parts: the tests above)
def test_the_routed_tree_is_what_the_stored_node_weights_predict(study):
    spec = load_spec("quick", STUDY)
    folder = only_trial_folder(study, TREE_ARM)
    final = max(folder.glob("checkpoint_*"))
    state = torch.load(final / "checkpoint.pt", weights_only=True)
    record = json.loads((folder / TREE_NODES_FILE).read_text())
    layout = spec.trees["t"].layout()
    nodes = {node.name: create_backbone("small_cnn", len(node.groups)) for node in layout.nodes}
    tree = CnnTree(layout, tuple(record["class_names"]), nodes, "hard")
    tree.load_state_dict(state["model"])
    dataset = load_dataset(spec.data)
    test = torch.from_numpy(load_splits(study.experiment_dir / "ferbench" / "splits.npz")[0]["test"])
    info = get_backbone_info("small_cnn")
    adapter = InputAdapter(24, info.in_chans, info.channel_order, info.mean, info.std)
    probabilities = torch.softmax(predict(tree, torch.from_numpy(dataset.images), test, batch_size=256, adapter=adapter,
                                          device=torch.device("cpu")), dim=1).numpy()
    stored = np.load(folder / TEST_PREDICTIONS_FILE)
    assert np.array_equal(stored["indices"], test.numpy())
    assert np.allclose(stored["probabilities"], probabilities, atol=1e-5)
    trials = pd.read_csv(study.report_dir / "tables" / "trials.csv").set_index("arm_id")
    accuracy = float((probabilities.argmax(1) == dataset.labels[test.numpy()]).mean())
    assert trials.loc[TREE_ARM, "test_acc"] == pytest.approx(accuracy)
    # the extra test set is scored by the routed tree too
    cross = json.loads((folder / "cross_dataset.json").read_text())["datasets"][0]
    assert cross["n_images"] == 70 and trials.loc[TREE_ARM, "cross_other_acc"] == pytest.approx(cross["scalars"]["acc"])
    # each node's test score: its own classes' test images, with its groups as targets
    for node in record["nodes"]:
        spec_node = next(n for n in spec.trees["t"].nodes if n.name == node["name"])
        _, member = node_targets(dataset.labels, tuple(record["class_names"]), spec_node)
        assert node["test_size"] == int(member[test.numpy()].sum())
        assert int(np.sum(node["test"]["confusion_matrix"])) == node["test_size"]


@pytest.mark.e2e  # a whole study (its parts: the tests above)
def test_the_report_shows_nodes_the_trees_classification_report_and_the_comparison(study):
    tables = study.report_dir / "tables"
    nodes = pd.read_csv(tables / "tree_nodes.csv")
    assert nodes["node"].tolist() == ["nn1", "nn2", "nn3", "nn4"]
    versus = pd.read_csv(tables / "tree_vs_networks.csv")
    trials = pd.read_csv(tables / "trials.csv").set_index("arm_id")
    acc = versus[versus["metric"] == "test_acc"].iloc[0]
    assert acc["mean_diff"] == pytest.approx(trials.loc[TREE_ARM, "test_acc"] - trials.loc["small_cnn_random_baseline_s0", "test_acc"])
    assert not acc["claim"]  # one seed
    report = (study.report_dir / "report.md").read_text()
    assert "## Decision trees of CNNs" in report and "Classification report" in report and "| macro avg |" in report
    cross = pd.read_csv(tables / "cross_dataset.csv")  # eval.datasets, for both kinds of arm
    assert sorted(cross["arm_id"]) == sorted(["small_cnn_random_baseline_s0", TREE_ARM]) and set(cross["n_images"]) == {70}
    assert "## Cross-dataset evaluation" in report
    assert "Node `nn3`: confusion over its groups" in report
    # the tree's node rows are no network's curve: the MCR/MOFR table has the single network only
    mcr = pd.read_csv(tables / "mcr_mofr.csv")
    assert set(mcr["arm_id"]) == {"small_cnn_random_baseline_s0"}


@pytest.mark.e2e  # a second tree study
def test_a_tree_trial_failing_inside_a_node_resumes_there_with_identical_results(study, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAIL_ONCE_ENV, "4")  # inside nn2 (rows 3-5), after nn1 finished
    monkeypatch.setenv(FAIL_MARKER_ENV, str(markers))
    retried = run_study(load_spec("quick", [*STUDY, "grid.backbone=[tree:t]", f"run.storage={tmp_path}", "run.name=retried"]))
    assert sorted(p.name for p in markers.iterdir()) == [TREE_ARM]
    assert retried.statuses == {TREE_ARM: "completed"}
    columns = ["epoch", "node", "round_epoch", "train_size", "train_acc", "train_loss", "val_acc", "val_loss"]
    pd.testing.assert_frame_equal(_rows(study)[columns], _rows(retried)[columns])
    trials = [pd.read_csv(o.report_dir / "tables" / "trials.csv").set_index("arm_id").loc[TREE_ARM] for o in (study, retried)]
    assert trials[0]["test_acc"] == trials[1]["test_acc"] and trials[1]["resumed_at_epochs"] == 5


# --- the built-in studies ---------------------------------------------------------------------------


def test_the_moravcik2021_study_holds_the_thesis_tree_and_table_5_3():
    spec = load_spec("moravcik2021")
    tree = spec.trees["moravcik2021"]
    assert [(n.name, n.groups) for n in tree.nodes] == THESIS and tree.routing == "hard"
    table_5_3 = {  # blocks, rotation, shift, zoom, shear, flip
        "nn1": (3, 0, 0.15, 0.15, 0, False), "nn2": (2, 20, 0.15, 0.2, 0.2, True),
        "nn3": (3, 40, 0.4, 0.4, 0.4, True), "nn4": (2, 20, 0.15, 0.2, 0.2, True),
    }
    data = spec.model_dump(mode="json")
    for node in tree.nodes:
        own = StudySpec.model_validate(node_spec_data(data, node, "baseline"))
        augment = own.train.augment
        assert (own.model.moravcik_blocks, augment.rotation_deg, augment.translate, augment.zoom, augment.shear_deg,
                augment.hflip) == table_5_3[node.name] and augment.enabled
    assert tree.nodes[0].variant == "balanced"  # "two evenly distributed parts"
    assert spec.split.kind == "official" and spec.split.test == "PublicTest"  # PrivateTest validates
    arms = {(a["backbone"], a["variant"], a["settings"]["train.augment.enabled"]) for a in spec.arms()}
    assert arms == {(b, v, b != "moravcik_base") for b in ("moravcik_base", "moravcik_final", "tree:moravcik2021")
                    for v in ("baseline", "balanced")}


def test_the_moravcik2021_ckplus_study_transfers_both_ways_of_the_thesis():
    spec = load_spec("moravcik2021_ckplus")
    policies = {(a["settings"]["train.freeze.policy"], a["settings"]["train.freeze.reinit_fc"]) for a in spec.arms()}
    assert policies == {("head_only", False), ("fc_only", True)}
    assert {a["init"] for a in spec.arms()} == {"pretrained"} and spec.data.contempt == "happy"
    assert spec.split.ratios[2] == 0.2  # 20% test


def test_the_printed_spec_shows_each_tree_and_node_as_a_section_and_reads_back_the_same(tmp_path):
    from ferbench.harness.spec_yaml import commented_spec_yaml

    spec = load_spec("moravcik2021", ["data.path=/data/fer2013.csv"])
    text = commented_spec_yaml(spec)
    assert "trees:\n  moravcik2021:\n" in text and "    nodes:\n      -\n" in text and "        name: nn3\n" in text
    (tmp_path / "study.yaml").write_text(text)
    assert load_spec(str(tmp_path / "study.yaml")) == spec
