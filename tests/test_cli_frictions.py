"""The command line as a new user tries it: ``--version``, ``python -m ferbench``, ``ferbench spec``
(a commented study file, or the JSON schema for editors), the built-in studies in ``run --help``,
a Hydra-style ``key=value`` argument, ``--s3-endpoint`` on ``run`` as on ``report``, and a package
whose declared dependencies cover what its code imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import resources
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import yaml

import ferbench
from ferbench.harness.cli.main import EXIT_USAGE, _parser, main, resume_command
from ferbench.harness.spec import BUILTIN_STUDY_PACKAGE, StudySpec, builtin_studies, load_spec, spec_to_yaml
from ferbench.harness.spec_yaml import commented_spec_yaml, spec_json_schema, unused_data_keys

ROOT = Path(__file__).resolve().parents[1]
HINT = "ferbench: error: 'train.epochs=2' looks like an override; use --set train.epochs=2\n"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``ferbench ARGV`` run in this process (argparse's exits included)."""
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- --version and python -m ferbench ----------------------------------------------------------


def test_version_prints_the_installed_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0
    assert out == f"ferbench {version('ferbench')}\n" == f"ferbench {ferbench.__version__}\n"


def test_python_m_ferbench_is_the_ferbench_command():
    """One subprocess, as a user without the scripts folder on PATH runs it: the same program name,
    version and subcommands."""
    result = subprocess.run([sys.executable, "-m", "ferbench", "run", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ferbench run ")
    assert "quick" in result.stdout and "--s3-endpoint" in result.stdout
    result = subprocess.run([sys.executable, "-m", "ferbench", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"ferbench {ferbench.__version__}\n")


# --- ferbench run --help -------------------------------------------------------------------------


def _yaml_descriptions() -> dict[str, str]:
    folder = resources.files(BUILTIN_STUDY_PACKAGE)
    return {name: yaml.safe_load(folder.joinpath(f"{name}.yaml").read_text())["description"] for name in builtin_studies()}


def test_run_help_lists_every_builtin_study_with_its_description(capsys):
    code, out, _ = cli(capsys, "run", "--help")
    assert code == 0
    descriptions = _yaml_descriptions()
    assert {"quick", "smelyakov2022"} <= set(descriptions)
    listed = out.split("built-in studies (STUDY):\n", 1)[1]
    for name, description in descriptions.items():
        assert description, f"{name}.yaml has no description"
        assert re.search(rf"^  {re.escape(name)} +{re.escape(description)}$", listed, re.MULTILINE), (name, listed)


# --- the Hydra habit: a positional key=value ----------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["run", "quick", "train.epochs=2"],
    ["run", "train.epochs=2"],
    ["run", "--set", "grid.seed=[0]", "quick", "train.epochs=2", "--print-spec"],
    ["spec", "quick", "train.epochs=2"],
    ["spec", "train.epochs=2"],
])
def test_a_positional_override_gets_a_one_line_hint(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *argv)
    assert (code, out, err) == (EXIT_USAGE, "", HINT)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_existing_file_named_like_an_override_is_a_study_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("epochs=2.yaml").write_text("grid:\n  backbone: [small_cnn]\ntrain:\n  epochs: 2\n")
    code, out, err = cli(capsys, "run", "epochs=2.yaml", "--print-spec")
    assert code == 0, err
    assert yaml.safe_load(out)["train"]["epochs"] == 2


def test_other_stray_arguments_are_still_argparse_errors(capsys):
    code, out, err = cli(capsys, "run", "quick", "extra")
    assert code == EXIT_USAGE and out == ""
    assert "unrecognized arguments: extra" in err and "looks like an override" not in err


# --- --s3-endpoint: one spelling on run and report ------------------------------------------------


def test_s3_endpoint_on_run_sets_run_s3_endpoint(capsys):
    url = "http://127.0.0.1:9000"
    code, out, err = cli(capsys, "run", "--storage", "s3://bucket/prefix", "--s3-endpoint", url, "--print-spec")
    assert code == 0, err
    assert yaml.safe_load(out)["run"]["s3_endpoint"] == url
    assert load_spec("quick", ["run.storage=s3://bucket/prefix", f"run.s3_endpoint={url}"]).run.s3_endpoint == url


def test_the_help_texts_say_both_s3_endpoint_options_are_the_same_setting():
    subparsers = next(a for a in _parser()._actions if a.dest == "command").choices
    helps = {name: next(a.help for a in subparsers[name]._actions if "--s3-endpoint" in a.option_strings)
             for name in ("run", "report")}
    assert "--set run.s3_endpoint=URL" in helps["run"] and "ferbench report --s3-endpoint" in helps["run"]
    assert "run.s3_endpoint" in helps["report"] and "ferbench run --s3-endpoint" in helps["report"]


def test_the_resume_command_keeps_the_s3_endpoint():
    command = resume_command("quick", "s3://bucket/prefix", "quick-1", "http://127.0.0.1:9000")
    assert command == ("ferbench run quick --resume --storage s3://bucket/prefix --s3-endpoint http://127.0.0.1:9000 "
                       "--set run.name=quick-1")
    assert "--s3-endpoint" not in resume_command("quick", "/tmp/results", "quick-1")


# --- --print-spec / ferbench spec: a commented study file ----------------------------------------


def comments_by_key(text: str) -> dict[str, str]:
    """Dotted key → the ``#`` comment lines right above it (joined), for every key line of ``text``."""
    found, stack, pending = {}, [], []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped:
            pending = []
            continue
        depth = (len(line) - len(stripped)) // 2
        if stripped.startswith("#"):
            pending.append(stripped.removeprefix("#").strip())
            continue
        key = stripped.split(":", 1)[0]
        stack = stack[:depth] + [key]
        found[".".join(stack)] = " ".join(pending)
        pending = []
    return found


def described_fields(model=StudySpec, prefix: str = "") -> dict[str, str]:
    """Dotted key → its Field description, for every described field of the spec."""
    found = {}
    for name, field in model.model_fields.items():
        if field.description:
            found[prefix + name] = " ".join(field.description.replace("``", "`").split())
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            found.update(described_fields(annotation, f"{prefix}{name}."))
    return found


FORMAT_CASES = [  # (overrides, data keys that must be printed, data keys that must not)
    ([], {"format", "num_images", "image_size", "label_noise", "seed"},
     {"path", "ferplus_labels", "contempt", "class_map", "strict", "cache", "face_detect", "face_size"}),
    (["data.format=fer2013", "data.path=/data/fer2013.csv"], {"path", "ferplus_labels", "face_detect"},
     {"num_images", "image_size", "label_noise", "seed", "contempt", "class_map"}),
    (["data.format=ckplus", "data.path=/data/ck", "data.contempt=drop"], {"path", "contempt", "class_map"},
     {"num_images", "seed", "ferplus_labels"}),
    (["data.format=folder", "data.path=/data/faces", "data.class_map.anger=angry"], {"path", "class_map"},
     {"num_images", "ferplus_labels", "contempt"}),
    (["data.format=auto", "data.path=/data/x"], {"path", "ferplus_labels", "contempt", "class_map"},
     {"num_images", "image_size", "label_noise", "seed"}),
]


@pytest.mark.parametrize("overrides, shown, hidden", FORMAT_CASES)
def test_print_spec_leaves_out_data_keys_the_format_does_not_read(capsys, overrides, shown, hidden):
    argv = [part for override in overrides for part in ("--set", override)]
    # demo: its SynthFER settings are the defaults (quick's are not, so quick keeps them, noted, for any format)
    code, out, err = cli(capsys, "run", "demo", *argv, "--print-spec")
    assert code == 0, err
    printed = set(yaml.safe_load(out)["data"])
    assert shown <= printed and not hidden & printed, (printed, shown, hidden)
    assert set(unused_data_keys(load_spec("demo", overrides).data.format)) >= hidden


def test_every_printed_key_carries_its_description_as_a_comment_above_it(capsys):
    code, out, err = cli(capsys, "run", "smelyakov2022", "--set", "data.path=/data/fer2013.csv", "--print-spec")
    assert code == 0, err
    comments = comments_by_key(out)
    descriptions = described_fields()
    printed = {key: description for key, description in descriptions.items() if key in comments}
    assert len(printed) > 60 and "data.path" in printed and "train.freeze.k" in printed
    for key, description in printed.items():
        assert comments[key].startswith(description), (key, comments[key])
    assert "  # SynthFER: images to generate\n  num_images: 1500\n" in commented_spec_yaml(load_spec("quick"))


def test_a_set_but_unused_key_stays_with_a_note_so_the_spec_round_trips(tmp_path):
    spec = load_spec("smelyakov2022", ["data.path=/data/fer2013.csv", "data.num_images=100"])
    text = commented_spec_yaml(spec)
    assert "  # not used with data.format: fer2013\n  num_images: 100\n" in text
    (tmp_path / "s.yaml").write_text(text)
    assert load_spec(str(tmp_path / "s.yaml")) == spec


ROUND_TRIPS = [
    ("quick", []),
    ("smelyakov2022", ["data.path=/data/fer2013.csv", "train.lr=3e-4", "grid.seed=[0,1,2]",
                       "weights.files.resnet50=/w/r50.pth", "data.ferplus_labels=/data/fer2013new.csv"]),
    ("arsirii2023", ["data.path=/data/raf", "run.storage=s3://bucket/p", "run.s3_endpoint=http://h:9000"]),
    ("quick", ["data.format=ckplus", "data.path=~/ck+", "data.contempt=happy", "split.kind=subject_kfold",
               "split.folds=[0,3]", "description=yes", "run.name=2024", "data.drop_classes=[disgust]"]),
    ("quick", ["data.format=folder", "data.path=/d", "data.class_map.Ärger=angry", "description=a: b # not a comment",
               "grid.exclude=[]", "train.input_size=64", "train.eval_batch_size=128"]),
]


@pytest.mark.parametrize("study, overrides", ROUND_TRIPS)
def test_the_printed_spec_loads_back_as_the_same_spec(capsys, tmp_path, study, overrides):
    expected = load_spec(study, overrides)
    code, out, err = cli(capsys, "run", study, *[p for o in overrides for p in ("--set", o)], "--print-spec")
    assert code == 0, err
    assert out == commented_spec_yaml(expected) and out != spec_to_yaml(expected) and "\n  # " in out
    path = tmp_path / "printed.yaml"
    path.write_text(out)
    assert load_spec(str(path)) == expected
    assert cli(capsys, "spec", str(path)) == (0, out, "")  # printing it again changes nothing


def test_a_multi_line_text_value_round_trips(tmp_path):
    spec = load_spec("quick").model_copy(update={"description": "two\nlines: 'quoted' and # hash"})
    (tmp_path / "s.yaml").write_text(commented_spec_yaml(spec))
    assert load_spec(str(tmp_path / "s.yaml")).description == spec.description


def test_spec_is_run_print_spec_without_a_run(capsys, tmp_path):
    _, printed, _ = cli(capsys, "run", "smelyakov2022", "--set", "train.epochs=3", "--print-spec")
    assert cli(capsys, "spec", "smelyakov2022", "--set", "train.epochs=3") == (0, printed, "")
    out_file = tmp_path / "study.yaml"
    code, out, _ = cli(capsys, "spec", "smelyakov2022", "--set", "train.epochs=3", "--out", str(out_file))
    assert code == 0 and out == f"Wrote {out_file}\n" and out_file.read_text() == printed


# --- ferbench spec --schema ---------------------------------------------------------------------


def test_spec_out_on_a_full_disk_is_one_line_and_leaves_the_old_file_whole(capsys, mount_tmpfs):
    disk = mount_tmpfs("full", "size=16k")
    out_file = disk / "ferbench-spec.schema.json"
    out_file.write_text("{}\n")  # an earlier schema; the new one (about 30 kB) does not fit beside it
    code, _, err = cli(capsys, "spec", "--schema", "--out", str(out_file))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    assert out_file.read_text() == "{}\n" and [p.name for p in disk.iterdir()] == [out_file.name]


def test_spec_schema_describes_study_files(capsys, tmp_path):
    out_file = tmp_path / "ferbench-spec.schema.json"
    code, _, err = cli(capsys, "spec", "--schema", "--out", str(out_file))
    assert code == 0, err
    schema = json.loads(out_file.read_text())
    assert schema == json.loads(json.dumps(spec_json_schema()))
    assert schema["$schema"].endswith("2020-12/schema") and "study" not in schema["required"]
    assert set(schema["properties"]) == set(StudySpec.model_fields)
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert train["epochs"]["type"] == "integer"
    data = schema["$defs"]["DataSpec"]
    assert data["properties"]["num_images"]["description"] == "SynthFER: images to generate"
    assert "synthfer" in data["properties"]["format"]["enum"] and data["additionalProperties"] is False
    code, printed, _ = cli(capsys, "spec", "--schema")
    assert code == 0 and json.loads(printed) == schema
    assert cli(capsys, "spec", "quick", "--schema")[0] == EXIT_USAGE


def test_the_schema_accepts_the_builtin_studies_and_refuses_a_typo(capsys):
    jsonschema = pytest.importorskip("jsonschema")  # Ray requires it, so it is normally there
    schema = spec_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    folder = resources.files(BUILTIN_STUDY_PACKAGE)
    for name in builtin_studies():
        raw = yaml.safe_load(folder.joinpath(f"{name}.yaml").read_text())
        assert [e.message for e in validator.iter_errors(raw)] == [], name
        validator.validate(yaml.safe_load(commented_spec_yaml(load_spec(name))))
    raw = yaml.safe_load(folder.joinpath("quick.yaml").read_text())
    raw["train"]["epoch"] = 5  # the typo `--set` reports as an unknown key
    raw.pop("study")  # the loader takes the file name
    assert [e.message for e in validator.iter_errors(raw)] == ["Additional properties are not allowed ('epoch' was unexpected)"]


# --- declared dependencies ----------------------------------------------------------------------

# Import name → distribution, where they differ. cv2: the OpenCV build deepface requires.
DISTRIBUTION_OF = {"cv2": "opencv-contrib-python-headless", "PIL": "pillow", "yaml": "pyyaml",
                   "sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub", "mlflow": "mlflow-skinny"}
# A maintainer's script, run in a throw-away environment (its docstring says how): not dependencies.
MAINTAINER_SCRIPTS = {"backbones/keras_layers/record.py": {"tensorflow", "tf_keras"}}
EXTRAS_ONLY = {"h5py": "h5", "boto3": "cluster"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {_normalise(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}  # noqa: E731
    return names(project["dependencies"]), {extra: names(r) for extra, r in project["optional-dependencies"].items()}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module → the package files importing it, for every import outside the stdlib and ferbench."""
    found: dict[str, set[str]] = {}
    for folder in ("harness", "backbones", "reports", "ferbench"):
        for path in (ROOT / folder).rglob("*.py"):
            name = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "ferbench" \
                            and top not in MAINTAINER_SCRIPTS.get(name, ()):
                        found.setdefault(top, set()).add(name)
    return found


def test_every_imported_package_is_declared():
    core, extras = _declared()
    everything = core.union(*extras.values())
    imports = _third_party_imports()
    assert {"numpy", "PIL", "matplotlib", "cv2", "torch", "yaml"} <= set(imports)
    missing = {module: sorted(files) for module, files in imports.items()
               if _normalise(DISTRIBUTION_OF.get(module, module)) not in everything}
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_the_declared_opencv_is_the_one_installed_here():
    """Two OpenCV distributions overwrite each other's cv2; declare the one deepface pulls in."""
    installed = {_normalise(d) for d in packages_distributions().get("cv2", [])}
    assert installed == {_normalise(DISTRIBUTION_OF["cv2"])}
    assert _normalise(DISTRIBUTION_OF["cv2"]) in _declared()[0]


def test_optional_packages_are_extras_imported_only_inside_functions():
    """h5py (weights import-h5) and boto3 (Ray's AWS cluster launcher) are extras: the test extra has
    them too, and no module imports them at its top, where every ``ferbench`` command would need them."""
    core, extras = _declared()
    for package, extra in EXTRAS_ONLY.items():
        assert package not in core and package in extras[extra] and package in extras["test"], package
    for folder in ("harness", "backbones", "reports", "ferbench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:  # module level only
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    assert not {n.split(".")[0] for n in names} & set(EXTRAS_ONLY), f"{path}:{node.lineno}"


def test_extra_keys_a_section_allows_round_trip(tmp_path):
    """A section that keeps keys beyond its fields (extra grid axes such as ``grid.train.lr``) prints them too."""
    from ferbench.harness.spec import GridSpec

    if GridSpec.model_config.get("extra") != "allow":
        pytest.skip("this version's grid has no extra axes")
    spec = load_spec("quick", ["grid.train.lr=[1e-4,3e-4]"])
    text = commented_spec_yaml(spec)
    assert "\n  train.lr: [0.0001, 0.0003]\n" in text
    (tmp_path / "s.yaml").write_text(text)
    assert load_spec(str(tmp_path / "s.yaml")) == spec


def test_output_into_a_closed_pipe_ends_quietly():
    """`ferbench backbones | head -1`: the reader leaves early; no traceback, exit 0."""
    process = subprocess.Popen([sys.executable, "-m", "ferbench", "backbones"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # closed before the command writes its first line
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0 and stderr == b""
