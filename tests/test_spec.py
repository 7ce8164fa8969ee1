"""Study specs (harness/spec.py) and the CLI's handling of them (``ferbench run``).

Bad input must end in one line per problem naming the key and the bad value, exit code 2,
no traceback, and nothing written under the storage directory.
"""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from ferbench.harness.cli.main import EXIT_USAGE, main
from ferbench.harness.spec_yaml import commented_spec_yaml
from ferbench.harness.spec import SpecError, StudySpec, apply_override, arm_id, builtin_studies, load_spec

ERROR_PREFIX = "ferbench: error: "


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code: int, err: str, storage) -> list[str]:
    """Exit 2, no traceback, every stderr line is a ferbench error line, nothing written."""
    assert code == EXIT_USAGE
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(ERROR_PREFIX) for line in lines), err
    assert not storage.exists() or not any(storage.iterdir())
    return [line.removeprefix(ERROR_PREFIX) for line in lines]


# --- built-in studies and overrides ----------------------------------------------------------


def test_builtin_studies_load():
    assert {"quick", "smelyakov2022"} <= set(builtin_studies())
    quick = load_spec("quick")
    assert quick.study == "quick"
    assert quick.data.format == "synthfer"
    assert quick.grid.backbone == ["small_cnn", "timm:regnetx_002"]
    assert load_spec("demo").grid.backbone == ["small_cnn", "mobilenet_v1"]
    assert quick.run.allow_unavailable is True
    paper = load_spec("smelyakov2022")
    assert paper.study == "smelyakov2022"
    assert paper.data.format == "fer2013" and paper.data.path is None
    assert paper.train.lr == pytest.approx(1e-4) and paper.train.epochs == 20
    assert paper.split.ratios == (0.7, 0.1, 0.2) and paper.split.seed == 42
    assert set(paper.grid.backbone) == {"vggface", "openface", "resnet50", "mobilenet_v1"}
    assert set(paper.grid.init) == {"pretrained", "random"}


def test_overrides_parse_ints_floats_lists_and_nested_keys():
    spec = load_spec(
        "quick",
        [
            "train.epochs=3",
            "train.lr=1e-4",
            "train.weight_decay=2.5e-3",
            "grid.seed=[0,1]",
            "grid.backbone=[small_cnn]",
            "grid.exclude=[]",
            "train.augment.hflip=false",
            "train.augment.rotation_deg=15",
            "split.ratios=[0.8, 0.1, 0.1]",
            "weights.files.mobilenet_v1=/weights/mnv1.safetensors",
            "run.name=my-run",
        ],
    )
    assert spec.train.epochs == 3 and isinstance(spec.train.epochs, int)
    assert spec.train.lr == 1e-4 and isinstance(spec.train.lr, float)
    assert spec.train.weight_decay == 2.5e-3
    assert spec.grid.seed == [0, 1]
    assert spec.grid.backbone == ["small_cnn"]
    assert spec.train.augment.hflip is False
    assert spec.train.augment.rotation_deg == 15.0
    assert spec.split.ratios == (0.8, 0.1, 0.1)
    assert spec.weights.files == {"mobilenet_v1": "/weights/mnv1.safetensors"}
    assert spec.run.name == "my-run"
    # Untouched values keep the study file's values.
    quick = yaml.safe_load(resources.files("ferbench.harness.study.studies").joinpath("quick.yaml").read_text())
    assert spec.train.batch_size == quick["train"]["batch_size"] and spec.data.num_images == quick["data"]["num_images"]


def test_later_override_wins():
    assert load_spec("quick", ["train.epochs=3", "train.epochs=7"]).train.epochs == 7


def test_apply_override_creates_missing_sections():
    raw: dict = {}
    apply_override(raw, "train.augment.zoom=0.2")
    apply_override(raw, "grid.seed=[1, 2]")
    assert raw == {"train": {"augment": {"zoom": 0.2}}, "grid": {"seed": [1, 2]}}


def test_numeric_looking_string_override_for_string_field():
    assert load_spec("quick", ["run.name=2024"]).run.name == "2024"


# --- arms and arm ids -------------------------------------------------------------------------


def test_arms_order_is_backbone_init_variant_seed_product():
    spec = load_spec(
        "quick", ["grid.backbone=[mobilenet_v1, small_cnn]", "grid.init=[random, pretrained]", "grid.seed=[3, 1]",
                  "grid.exclude=[]", "grid.variant=[baseline]"]
    )
    got = [(a["backbone"], a["init"], a["variant"], a["seed"]) for a in spec.arms()]
    assert got == [
        ("mobilenet_v1", "random", "baseline", 3),
        ("mobilenet_v1", "random", "baseline", 1),
        ("mobilenet_v1", "pretrained", "baseline", 3),
        ("mobilenet_v1", "pretrained", "baseline", 1),
        ("small_cnn", "random", "baseline", 3),
        ("small_cnn", "random", "baseline", 1),
        ("small_cnn", "pretrained", "baseline", 3),
        ("small_cnn", "pretrained", "baseline", 1),
    ]
    assert [a["arm_id"] for a in spec.arms()] == [arm_id(a) for a in spec.arms()]
    assert len({a["arm_id"] for a in spec.arms()}) == 8


def test_quick_study_compares_random_and_synth_identity_pretraining():
    quick = load_spec("quick")
    assert [a["arm_id"] for a in quick.arms()] == [
        "small_cnn_random_baseline_s0",
        "small_cnn_pretrained_baseline_s0",
        "timm-regnetx_002_random_baseline_s0",
        "timm-regnetx_002_pretrained_baseline_s0",
        "timm-regnetx_002_pretrained_pseudo_label_s0",
    ]
    assert quick.split.unlabeled_fraction == 0.1  # the pseudo_label arm's pool, Arsirii's share
    assert quick.weights.source_for("timm:regnetx_002") == "synth-identity"
    assert load_spec("quick", ["weights.sources={mobilenet_v1: published}"]).weights.source_for("mobilenet_v1") == "published"

def test_exclude_rules_match_partial_arms():
    spec = load_spec(
        "quick",
        [
            "grid.backbone=[small_cnn, mobilenet_v1]",
            "grid.init=[random, pretrained]",
            "grid.seed=[0, 1]",
            "grid.exclude=[{init: pretrained, seed: 1}, {backbone: small_cnn, seed: 0}]",
            "grid.variant=[baseline]",
        ],
    )
    assert [a["arm_id"] for a in spec.arms()] == [
        "small_cnn_random_baseline_s1",
        "mobilenet_v1_random_baseline_s0",
        "mobilenet_v1_random_baseline_s1",
        "mobilenet_v1_pretrained_baseline_s0",
    ]


def test_arm_id_is_filesystem_safe():
    cell = {"backbone": "timm:hf/some_model", "init": "pretrained", "variant": "baseline", "seed": 7}
    assert arm_id(cell) == "timm-hf--some_model_pretrained_baseline_s7"  # '/' → '--': ORG/REPO ≠ ORG-REPO
    spec = load_spec("quick", ["grid.backbone=[timm:resnet18]", "grid.exclude=[]", "grid.init=[random]", "grid.seed=[0]",
                               "grid.variant=[baseline]"])
    assert [a["arm_id"] for a in spec.arms()] == ["timm-resnet18_random_baseline_s0"]


# --- --print-spec -----------------------------------------------------------------------------


@pytest.mark.parametrize("study, overrides", [
    ("quick", []),
    ("smelyakov2022", ["--set", "data.path=/data/fer2013.csv", "--set", "train.lr=3e-4",
                       "--set", "grid.seed=[0,1,2]", "--set", "weights.files.resnet50=/w/r50.pth"]),
])
def test_print_spec_round_trips(capsys, tmp_path, study, overrides):
    storage = tmp_path / "results"
    code, out, err = run_cli(capsys, study, *overrides, "--storage", str(storage), "--print-spec")
    assert code == 0, err
    expected = load_spec(study, [v for v in overrides if v != "--set"] + [f"run.storage={storage}"])
    assert StudySpec.model_validate(yaml.safe_load(out)) == expected
    assert out == commented_spec_yaml(expected)
    # The printed YAML is itself a study file that resolves to the same spec and prints identically.
    path = tmp_path / "printed.yaml"
    path.write_text(out)
    assert load_spec(str(path)) == expected
    code, out_again, _ = run_cli(capsys, str(path), "--print-spec")
    assert code == 0 and out_again == out
    assert not storage.exists()


def test_study_option_and_storage_option(capsys, tmp_path):
    storage = tmp_path / "elsewhere"
    code, out, _ = run_cli(capsys, "--study", "smelyakov2022", "--storage", str(storage), "--print-spec")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["study"] == "smelyakov2022"
    assert printed["run"]["storage"] == str(storage)


# --- bad input: one line per problem, exit 2, no traceback, nothing written ---------------------

BAD_OVERRIDES = [
    pytest.param(["trian.epochs=5"], [["trian", "unknown key", "'epochs': 5"]], id="unknown-top-level-key"),
    pytest.param(["train.epoch=5"], [["train.epoch", "unknown key", "5"]], id="unknown-nested-key"),
    pytest.param(["train.augment.hflp=false"], [["train.augment.hflp", "unknown key", "False"]],
                 id="unknown-deeply-nested-key"),
    pytest.param(["train.epochs=abc"], [["train.epochs", "integer", "'abc'"]], id="wrong-type"),
    pytest.param(["train.optimizer=rmsprop"], [["train.optimizer", "'rmsprop'", "'adam'", "'sgd'"]],
                 id="literal-lists-allowed-values"),
    pytest.param(["train.lr=-1e-4"], [["train.lr", "greater than 0", "-0.0001"]], id="out-of-range"),
    pytest.param(["grid.backbone=[]"], [["grid.backbone", "at least 1", "[]"]], id="empty-grid-list"),
    pytest.param(["grid.seed=[]"], [["grid.seed", "at least 1", "[]"]], id="empty-seed-list"),
    pytest.param(["grid.seed=[0, 0]"], [["grid.seed", "unique", "[0, 0]"]], id="duplicate-seeds"),
    pytest.param(["grid.exclude=[{backbone: small_cnn}, {backbone: 'timm:regnetx_002'}]"],
                 [["grid", "grid.exclude", "empty"]], id="exclude-removes-every-arm"),
    pytest.param(["grid.exclude=[{model: small_cnn}]"], [["grid.exclude", "'model'", "backbone"]],
                 id="exclude-rule-unknown-axis"),
    pytest.param(["grid.backbone=[small_cnn, resnet_50]"],
                 [["grid.backbone.1", "'resnet_50'", "mobilenet_v1", "resnet50", "small_cnn", "timm:"]],
                 id="unknown-backbone"),
    pytest.param(["grid.backbone=[timm:no_such_model_xyz]"], [["grid.backbone.0", "'timm:no_such_model_xyz'"]],
                 id="unknown-timm-backbone"),
    pytest.param(["data.format=fer2014"], [["data.format", "'fer2014'", "synthfer", "fer2013", "rafdb", "ckplus", "auto"]], id="unknown-dataset"),
    pytest.param(["split.ratios=[0.7, 0.2, 0.2]"], [["split.ratios", "sum", "0.7, 0.2, 0.2"]], id="ratios-sum"),
    pytest.param(["split.ratios=[0.5, 0.1, 0.2, 0.2]"], [["split.ratios", "at most 3", "[0.5, 0.1, 0.2, 0.2]"]],
                 id="ratios-four-values"),
    pytest.param(["split.ratios=[0.9, 0.1]"], [["split.ratios", "[0.9, 0.1]"]], id="ratios-two-values"),
    pytest.param(["split.ratios=[1.0, 0.0, 0.0]"], [["split.ratios", "positive", "1.0, 0.0, 0.0"]],
                 id="ratios-zero"),
    pytest.param(["train.epochs"], [["--set 'train.epochs'", "KEY=VALUE"]], id="set-without-equals"),
    pytest.param(["=5"], [["--set '=5'", "KEY=VALUE"]], id="set-without-key"),
    pytest.param(["train.epochs.x=1"], [["--set 'train.epochs.x=1'", "'epochs'", "not a section"]],
                 id="set-into-a-value"),
    pytest.param(["train.epochs=0", "trian.lr=1"],
                 [["train.epochs", "greater than or equal to 1", "0"], ["trian", "unknown key"]],
                 id="two-problems-two-lines"),
    pytest.param(["grid.backbone=[foo, bar]", "data.format=nope"],
                 [["grid.backbone.0", "'foo'"], ["grid.backbone.1", "'bar'"], ["data.format", "'nope'"]],
                 id="three-name-problems-three-lines"),
]


@pytest.mark.parametrize("overrides, expected_lines", BAD_OVERRIDES)
def test_bad_overrides_fail_cleanly(capsys, tmp_path, overrides, expected_lines):
    storage = tmp_path / "results"
    argv = ["quick", "--storage", str(storage)]
    for assignment in overrides:
        argv += ["--set", assignment]
    code, out, err = run_cli(capsys, *argv)
    lines = assert_usage_error(code, err, storage)
    assert out == ""
    assert len(lines) == len(expected_lines), lines
    for line, fragments in zip(sorted(lines), sorted(expected_lines)):
        for fragment in fragments:
            assert fragment in line, (fragment, line)
    # The library raises the same message as a SpecError.
    with pytest.raises(SpecError) as excinfo:
        load_spec("quick", overrides)
    assert str(excinfo.value).splitlines() == lines


def test_missing_study_file(capsys, tmp_path):
    storage = tmp_path / "results"
    missing = tmp_path / "nope" / "study.yaml"
    code, _, err = run_cli(capsys, str(missing), "--set", f"run.storage={storage}")
    [line] = assert_usage_error(code, err, storage)
    assert str(missing) in line
    assert "quick" in line and "smelyakov2022" in line  # the built-in studies it could have meant


@pytest.mark.parametrize("text, fragment", [
    ("- quick\n- smelyakov2022\n", "mapping"),
    ("just a string\n", "mapping"),
    ("grid: [small_cnn\n", "not valid YAML"),
])
def test_study_file_that_is_not_a_mapping(capsys, tmp_path, text, fragment):
    storage = tmp_path / "results"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, str(path), "--storage", str(storage))
    [line] = assert_usage_error(code, err, storage)
    assert str(path) in line and fragment in line


def test_study_file_without_grid(capsys, tmp_path):
    storage = tmp_path / "results"
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 2\n")
    code, _, err = run_cli(capsys, str(path), "--storage", str(storage))
    assert assert_usage_error(code, err, storage) == ["grid: required key is missing"]
    # A file's study name defaults to its stem.
    path.write_text("grid:\n  backbone: [small_cnn]\n")
    assert load_spec(str(path)).study == "mine"


def test_study_file_with_unknown_section(capsys, tmp_path):
    storage = tmp_path / "results"
    path = tmp_path / "typo.yaml"
    path.write_text("grid:\n  backbone: [small_cnn]\ntraining:\n  epochs: 2\n")
    code, _, err = run_cli(capsys, str(path), "--storage", str(storage))
    [line] = assert_usage_error(code, err, storage)
    assert line.startswith("training: unknown key") and "'epochs': 2" in line


# --- preflight failures through the CLI (Ray must not start) ----------------------------------


@pytest.fixture
def no_ray_cluster(monkeypatch):
    """Preflight checks local resources only when not attached to a cluster. The session's Ray may be
    up already (an earlier in-process study started it, and it stays for the next), so what is checked
    is that this test starts none: starting one is refused and recorded."""
    import ray

    from ferbench.harness.study import engine

    started: list[str] = []

    def refuse(*args, **kwargs):
        started.append("Ray")
        raise AssertionError("a failing preflight must not start Ray")

    was_up = ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(engine, "init_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)
    yield

    assert not started and ray.is_initialized() == was_up, "a failing preflight must not start Ray"


def test_smelyakov_without_data_path_fails_in_preflight(capsys, tmp_path, no_ray_cluster):
    storage = tmp_path / "results"
    code, out, err = run_cli(capsys, "smelyakov2022", "--storage", str(storage), "--set", "resources.gpu=0",
                             "--set", "resources.cpu=1")
    lines = assert_usage_error(code, err, storage)
    assert not storage.exists()
    assert any(line.startswith("data.path:") and "fer2013.csv" in line for line in lines), lines
    assert "Study" not in out  # nothing was announced, nothing scheduled


def test_gpu_request_on_gpu_less_machine_fails_in_preflight(capsys, tmp_path, no_ray_cluster):
    import torch

    if torch.cuda.device_count() > 0:
        pytest.skip("this machine has a GPU")
    storage = tmp_path / "results"
    code, _, err = run_cli(capsys, "quick", "--storage", str(storage), "--set", "resources.gpu=1",
                           "--set", "data.num_images=140")
    lines = assert_usage_error(code, err, storage)
    assert not storage.exists()
    [gpu_line] = [line for line in lines if line.startswith("resources.gpu:")]
    assert "1.0 GPU" in gpu_line and "has 0" in gpu_line and "resources.gpu=0" in gpu_line


def test_paper_study_as_shipped_lists_every_problem_at_once(capsys, tmp_path, no_ray_cluster, isolated_weights):
    storage = tmp_path / "results"
    code, _, err = run_cli(capsys, "smelyakov2022", "--storage", str(storage))
    lines = assert_usage_error(code, err, storage)
    keys = [line.split(":")[0] for line in lines]
    assert "data.path" in keys
    assert "mobilenet_v1" in keys and "resnet50" in keys  # pretrained weights missing offline
    import torch

    if torch.cuda.device_count() == 0:
        assert "resources.gpu" in keys
