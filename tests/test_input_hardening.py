"""Messy input gets one clear message naming the file, class or key and the fix, never a traceback.

Each test reproduces a case a researcher met: a results folder that cannot be written, class
folders that cannot be read, datasets too small for their split, classes that vanish, paths in
run.name, a study file under ``~``, weight files the spec would ignore, pickled or foreign weight
files, and file names that must stay text in the report. Tests run as root, where permissions do
not stop reads or writes, so unreadable and read-only places are made from broken links, symbolic
link loops, a file where a folder belongs, FIFOs and a read-only tmpfs mount.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_class_tree, write_image

from ferbench.harness.cli.main import main
from ferbench.harness.data.checks import inspect
from ferbench.harness.cli.data_cmd import summary_text
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.study.preflight import PreflightError, run_preflight
from ferbench.harness.spec import DataSpec, SpecError, load_spec
from ferbench.harness.data.splits import named_index_sets
from ferbench.reports.data_section import render_data_section

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TINY = ["grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline]", "grid.exclude=[]",
        "data.image_size=16", "resources.cpu=1", "resources.gpu=0"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every check here must end before Ray starts. The session's Ray may be up already (it is never shut
    down for this), so starting Ray, or a study reaching it, is what is refused and recorded."""
    import ray
    from ray import tune

    from ferbench.harness.study import engine

    reached: list[str] = []

    def refuse(what: str):
        def refused(*args, **kwargs):
            reached.append(what)
            raise AssertionError(f"{what} was called: the error came only after Ray had started")
        return refused

    was_up = ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # not attached to a cluster: preflight checks this machine
    monkeypatch.setattr(engine, "init_ray", refuse("init_ray"))
    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(tune.Tuner, "fit", refuse("Tuner.fit"))
    yield
    assert not reached, f"the error came only after Ray had started ({', '.join(reached)})"
    assert ray.is_initialized() == was_up


def ferbench(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and the one error line of ``ferbench ARGV`` (asserted to be exactly one line)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("data: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ferbench: error: "), err
    assert "Traceback" not in err
    return code, lines[0]


def run_args(storage: Path, *overrides: str) -> list[str]:
    return ["run", "--storage", str(storage), *(arg for item in [*TINY, *overrides] for arg in ("--set", item))]


def folder_data(path: Path) -> list[str]:
    return ["data.format=folder", f"data.path={path}", "data.cache=false"]


def preflight_error(*overrides: str) -> str:
    with pytest.raises(PreflightError) as caught:
        run_preflight(load_spec("quick", [*TINY, *overrides]))
    message = str(caught.value)
    assert "Traceback" not in message
    return message


def by_class(value: int = 0):
    return lambda name: 10 * CLASSES.index(name) + value


# --- 6a: a results folder that cannot be written stops preflight, before Ray ------------------


def test_storage_below_a_file_is_one_line_before_ray(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    _, line = ferbench(capsys, *run_args(tmp_path / "afile" / "results"))
    assert f"run.storage: {tmp_path / 'afile' / 'results'} cannot be created: {tmp_path / 'afile'} is a file, not a folder" in line
    assert "--storage DIR" in line


@pytest.fixture
def read_only_folder(mount_tmpfs):
    """A read-only tmpfs mount: the one place root cannot write."""
    return mount_tmpfs("read-only", "ro,size=1m")


def test_read_only_storage_is_one_line_before_ray(read_only_folder, capsys):
    _, line = ferbench(capsys, *run_args(read_only_folder / "results"))
    assert f"run.storage: {read_only_folder / 'results'} is not writable (Read-only file system); " \
           "choose another folder with --storage DIR" in line
    _, line = ferbench(capsys, *run_args(read_only_folder))  # the mount point itself
    assert f"run.storage: {read_only_folder} is not writable (Read-only file system)" in line


def test_storage_check_leaves_nothing_behind_and_skips_object_storage(tmp_path):
    from ferbench.harness.study.preflight import check_storage_writable

    spec = load_spec("quick", [*TINY, f"run.storage={tmp_path / 'new' / 'results'}"])
    assert check_storage_writable(spec) == []
    assert not (tmp_path / "new").exists()  # created for the check, removed again
    assert check_storage_writable(load_spec("quick", [*TINY, "run.storage=s3://bucket/prefix"])) == []


# --- 6b: a class folder that cannot be read is one line, in data inspect and in run ------------


@pytest.mark.parametrize("kind, why", [("dangling", "a broken symbolic link to"), ("loop", "a symbolic link loop")])
def test_unreadable_class_folder_is_one_line_in_inspect_and_run(tmp_path, capsys, kind, why):
    data = tmp_path / "faces"
    write_class_tree(data, {"angry": 4, "happy": 4, "sad": 4}, by_class())
    (data / "fear").symlink_to(tmp_path / "nowhere" if kind == "dangling" else data / "fear")
    _, line = ferbench(capsys, "data", "inspect", str(data), "--format", "folder", "--set", "cache=false")
    assert f"{data / 'fear'}: cannot be read ({why}" in line and "fix the link" in line
    _, line = ferbench(capsys, *run_args(tmp_path / "results", *folder_data(data)))
    assert f"{data / 'fear'}: cannot be read ({why}" in line
    assert not (tmp_path / "results").exists()


def test_class_folder_without_read_permission_is_one_line(tmp_path, capsys, monkeypatch):
    """As a user without the permission sees it: root reads anything, so iterdir is made to fail."""
    data = tmp_path / "faces"
    write_class_tree(data, {"angry": 4, "happy": 4, "fear": 4}, by_class())
    iterdir = Path.iterdir

    def refusing(self):
        if self == data / "fear":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refusing)
    for argv in (["data", "inspect", str(data), "--format", "folder", "--set", "cache=false"],
                 run_args(tmp_path / "results", *folder_data(data))):
        _, line = ferbench(capsys, *argv)
        assert f"{data / 'fear'}: cannot read this folder (Permission denied); fix its permissions, or remove it" in line


def test_data_path_that_is_a_link_loop_is_one_line(tmp_path, capsys):
    loop = tmp_path / "faces"
    loop.symlink_to(loop)
    _, line = ferbench(capsys, *run_args(tmp_path / "results", *folder_data(loop)))
    assert str(loop) in line and "symbolic link loop" in line


def test_fifo_and_broken_link_images_are_skipped_and_listed_not_waited_on(tmp_path):
    data = tmp_path / "faces"
    write_class_tree(data, {"angry": 3, "happy": 3}, by_class())
    os.mkfifo(data / "happy" / "pipe.png")  # opening it would block forever
    (data / "angry" / "gone.png").symlink_to(tmp_path / "deleted.png")
    signal.alarm(60)
    try:
        dataset = load_dataset(DataSpec(format="folder", path=str(data), cache=False))
    finally:
        signal.alarm(0)
    skipped = {item["path"]: item["reason"] for item in dataset.meta["skipped"]}
    assert skipped == {str(data / "angry" / "gone.png"): f"a broken symbolic link to {tmp_path / 'deleted.png'}",
                       str(data / "happy" / "pipe.png"): "not a regular file (a folder, FIFO, socket or device)"}
    assert len(dataset) == 6
    with pytest.raises(DataError, match="gone.png: unreadable image .*broken symbolic link"):
        load_dataset(DataSpec(format="folder", path=str(data), cache=False, strict=True))


# --- 7: datasets too small for their split ---------------------------------------------------


def test_21_images_3_per_class_say_how_many_the_split_needs(tmp_path):
    write_class_tree(tmp_path / "faces", {name: 3 for name in CLASSES}, by_class())
    message = preflight_error(*folder_data(tmp_path / "faces"))
    assert "should be greater or equal" not in message  # sklearn's words
    assert message == (
        "split.ratios: the stratified test part cannot be cut: 0.2 of 21 images is 5, fewer than one image for each of the "
        "7 classes; add images (train/val/test 0.7/0.1/0.2 of 7 classes needs at least 60 images), change split.ratios, "
        "or leave classes out with --set data.drop_classes=[...]"
    )


def test_synthfer_of_7_images_names_the_classes_and_data_num_images():
    message = preflight_error("data.num_images=7")
    assert "n_samples" not in message and len(message.splitlines()) == 1
    assert message.startswith("split: classes 'angry' (1 image), 'disgust' (1 image)")
    assert "fewer than the 3 a stratified train/val/test 0.7/0.1/0.2 split needs (one per part)" in message
    assert "raise data.num_images (from about 161 SynthFER has 3 images of every class)" in message
    assert "drop_classes" not in message  # dropping every class is no fix


@pytest.fixture
def one_fear(tmp_path) -> Path:
    """Three classes of 20 images and 'fear' with one."""
    write_class_tree(tmp_path / "faces", {"angry": 20, "happy": 20, "sad": 20, "fear": 1}, by_class())
    return tmp_path / "faces"


def test_class_with_one_image_stops_naming_it_and_the_ways_on(one_fear):
    message = preflight_error(*folder_data(one_fear))
    assert message == (
        "split: class 'fear' (1 image) has fewer than the 3 a stratified train/val/test 0.7/0.1/0.2 split needs (one per "
        "part); add images, leave it out with --set data.drop_classes=[fear], or run anyway with --set "
        "split.allow_missing_classes=true (val and test metrics of such a class are then undefined)"
    )


def test_allowed_small_class_runs_and_the_data_section_says_it_has_no_test_image(one_fear, tmp_path, caplog):
    spec = load_spec("quick", [*TINY, *folder_data(one_fear), "split.allow_missing_classes=true"])
    preflight = run_preflight(spec)
    assert "data: warning: class 'fear' (1 image) has no test image (train 1, val 0, test 0)" in caplog.text
    missing = {(entry["class"], entry["part"]) for entry in preflight.data_notes["missing_classes"]}
    assert missing == {("fear", "val"), ("fear", "test")}
    summary = {**inspect(preflight.dataset, named_index_sets(preflight.splits)), **preflight.data_notes}
    markdown = render_data_section(summary, tmp_path / "figures")
    warning = next(line for line in markdown.splitlines() if line.startswith("> **WARNING:**") and "fear" in line)
    assert "has no test image" in warning and "undefined" in warning
    assert "- Classes missing from a part of the split: 2" in markdown


def test_dropped_class_is_left_out_and_listed(one_fear, tmp_path):
    spec = load_spec("quick", [*TINY, *folder_data(one_fear), "data.drop_classes=[fear]"])
    preflight = run_preflight(spec)
    assert preflight.dataset.class_names == ("angry", "happy", "sad") and len(preflight.dataset) == 60
    summary = {**inspect(preflight.dataset, named_index_sets(preflight.splits)), **preflight.data_notes}
    markdown = render_data_section(summary, tmp_path / "figures")
    assert "- Classes left out: 1" in markdown and "  - `fear`, 1 images: left out with data\\.drop\\_classes" in markdown
    with pytest.raises(DataError, match=r"data.drop_classes: 'contempt' not in this dataset \(its classes: angry, fear"):
        load_dataset(DataSpec(format="folder", path=str(one_fear), cache=False, drop_classes=["contempt"]))


def test_class_whose_every_image_is_unreadable_stops_unless_left_out(tmp_path):
    data = tmp_path / "faces"
    write_class_tree(data, {"angry": 20, "happy": 20, "sad": 20}, by_class())
    for i in range(3):
        (data / "fear").mkdir(exist_ok=True)
        (data / "fear" / f"{i}.png").write_bytes(b"not a png")
    message = preflight_error(*folder_data(data))
    assert message.startswith("data: class 'fear': none of its 3 image file(s) could be read")
    assert "--set data.drop_classes=[fear]" in message
    preflight = run_preflight(load_spec("quick", [*TINY, *folder_data(data), "data.drop_classes=[fear]"]))
    summary = {**inspect(preflight.dataset, named_index_sets(preflight.splits)), **preflight.data_notes}
    assert summary["dropped_classes"] == [{"class": "fear", "images": 3, "reason": "no image could be used (all skipped; see the skipped files)"}]
    markdown = render_data_section(summary, tmp_path / "figures")
    assert "> **WARNING:** class 'fear' is not in the dataset" in markdown.replace("\\", "")
    assert "- Unreadable files skipped: 3" in markdown


def test_subject_kfold_with_too_few_subjects_of_a_class_names_split_k(tmp_path):
    data = tmp_path / "ckplus"
    for name, subjects in (("anger", range(1, 9)), ("happy", range(1, 9)), ("fear", range(1, 3))):
        for subject in subjects:
            write_image(data / name / f"S{subject:03d}_001_00000001.png", by_class()({"anger": "angry"}.get(name, name)))
    message = preflight_error("data.format=ckplus", f"data.path={data}", "data.cache=false", "split.kind=subject_kfold",
                              "split.k=4")
    assert message.startswith("split: class 'fear' (2 images) has images of only 2 subjects, fewer than the 4 that split.k=4 "
                              "subject-exclusive folds need")
    assert "lower split.k" in message


def test_official_split_without_a_class_in_its_test_part(tmp_path):
    path = tmp_path / "fer2013.csv"
    rows = [(label, usage) for usage in ("Training", "Training", "PublicTest", "PrivateTest") for label in (0, 3, 4)]
    rows += [(2, "Training"), (2, "Training")]  # fear: training images only
    pixels = np.random.default_rng(0).integers(0, 256, (len(rows), 16))
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{label},{' '.join(map(str, p))},{usage}\n"
                                                      for (label, usage), p in zip(rows, pixels)))
    message = preflight_error("data.format=fer2013", f"data.path={path}", "data.cache=false", "split.kind=official")
    assert message.startswith("split: class 'fear' (2 images) has none in the dataset's official test part (PrivateTest)")
    assert "use --set split.kind=stratified" in message


def test_a_class_missing_from_test_by_rounding_is_a_warning(caplog):
    """SynthFER's 240 images hold 4 disgust faces; the 0.2 test cut takes none of them. The study runs
    (the class is big enough for the split) and says so."""
    preflight = run_preflight(load_spec("quick", [*TINY, "data.num_images=240"]))
    err = caplog.text
    assert "data: warning: class 'disgust' (4 images) has no test image (train 3, val 1, test 0): its test F1" in err
    assert [(e["class"], e["part"]) for e in preflight.data_notes["missing_classes"]] == [("disgust", "test")]


# --- 8: run.name and the study file's path -----------------------------------------------------


@pytest.mark.parametrize("name, fragment", [
    ("../../x", "is a path, which would write outside run.storage"),
    ("a/b", "is a path"),
    ("..", "starts with '.'"),
    (".hidden", "starts with '.'"),
    (" ", "an empty name is not a folder"),
])
def test_run_name_must_be_one_plain_folder_name(tmp_path, capsys, name, fragment):
    _, line = ferbench(capsys, *run_args(tmp_path / "results", f"run.name={name}"))
    assert line.startswith("ferbench: error: run.name: ") and fragment in line and "e.g. --set run.name=" in line
    assert not (tmp_path / "results").exists() and not (tmp_path / "x").exists()


def test_study_file_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my.yaml").write_text("study: mine\ngrid:\n  backbone: [small_cnn]\n")
    assert load_spec("~/my.yaml").study == "mine"


# --- 9a: a weights.files entry the study would ignore ------------------------------------------


def test_weight_file_under_synth_identity_is_refused_with_the_fix():
    with pytest.raises(SpecError) as caught:
        load_spec("quick", ["grid.backbone=[openface]", "grid.init=[pretrained]", "weights.files.openface=/w/openface.pth"])
    assert str(caught.value) == (
        "weights.files.openface: the file is used only with published weights, but openface's pretrained arms use "
        "synth-identity (weights.source); to use the file add --set weights.sources.openface=published, otherwise drop "
        "weights.files.openface"
    )
    spec = load_spec("quick", ["grid.backbone=[openface]", "grid.init=[pretrained]", "weights.files.openface=/w/openface.pth",
                               "weights.sources.openface=published"])
    assert spec.weights.source_for("openface") == "published"
    with pytest.raises(SpecError, match="weights.files.openfase: unknown backbone 'openfase'"):
        load_spec("quick", ["weights.files.openfase=/w/openface.pth"])


# --- 9b: conversions, ignored entries and dropped classes in the Data section, as text -----------


def test_conversions_ignored_entries_and_dropped_classes_are_listed_and_escaped(tmp_path):
    data = tmp_path / "faces"
    write_class_tree(data, {"angry": 4, "happy": 4, "sad": 4, "contempt": 2}, lambda name: 10 * (CLASSES + ("contempt",)).index(name))
    evil = "a`b`[x](javascript:alert(1))"
    write_image(data / "happy" / f"{evil}.png", 40, colour=True)  # the only RGB file: converted to grey
    (data / "happy" / f"{evil}.jpg").write_bytes(b"broken")  # unreadable: skipped
    (data / "sad" / "notes.txt").write_text("not an image")
    (data / "README").write_text("not a class")
    os.mkfifo(data / "sad" / "pipe")
    dataset = load_dataset(DataSpec(format="folder", path=str(data), cache=False, contempt="drop"))
    summary = inspect(dataset)
    assert summary["converted"] == {"to": "grayscale", "paths": [str(data / "happy" / f"{evil}.png")]}
    assert summary["ignored"] == [str(data / "README"), str(data / "sad" / "notes.txt"), str(data / "sad" / "pipe")]
    assert summary["dropped_classes"] == [{"class": "contempt", "images": 2, "reason": "data.contempt: drop"}]
    text = summary_text(summary)  # ferbench data inspect
    assert "Files converted to grayscale: 1" in text and "Ignored entries (not image files): 3" in text
    assert "Classes left out: 1\n    contempt (2 images): data.contempt: drop" in text
    markdown = render_data_section(summary, tmp_path / "figures")
    assert "- Files converted to grayscale (the mode most files have): 1" in markdown
    assert "- Entries ignored (not image files): 3" in markdown and "- Classes left out: 1" in markdown
    import markdown as md

    page = md.markdown(markdown, extensions=["tables"])
    assert "javascript:" in page and "<a " not in page  # the name stays text, never a link
    assert f"<code>{data / 'happy' / evil}.png</code>" in page.replace("&amp;", "&")


# --- 11: weight files that are pickles, truncated, or of another network -------------------------


@pytest.mark.parametrize("backbone", ["small_cnn", "mobilenet_v1"])
def test_pickled_model_and_truncated_file_get_their_own_messages(tmp_path, backbone):
    from ferbench.backbones import create_backbone

    model = create_backbone(backbone, 7)
    pickled, truncated = tmp_path / "whole_model.pth", tmp_path / "cut.pth"
    torch.save(model, pickled)
    torch.save(model.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(ValueError) as caught:
        create_backbone(backbone, 2, weights_file=pickled)
    assert str(caught.value).startswith(f"{pickled}: not a plain tensor file: it holds pickled Python objects")
    assert "torch.save(model.state_dict(), PATH)" in str(caught.value) and "truncated" not in str(caught.value)
    assert "weights_only=False" not in str(caught.value)
    with pytest.raises(ValueError, match="not a readable weights file, truncated or corrupt"):
        create_backbone(backbone, 2, weights_file=truncated)


@pytest.mark.parametrize("backbone, first_missing", [("openface", "conv1.conv.weight"), ("resnet50", "conv1.weight")])
def test_weights_of_another_network_give_counts_and_first_mismatch_only(tmp_path, backbone, first_missing):
    """OpenFace used to list all 381 keys (8.9 KB); timm's ResNet-50 loaded such a file without a word
    (timm loads leniently once the classifier is replaced), leaving a random backbone."""
    from ferbench.backbones import create_backbone

    path = tmp_path / "mobilenet.pth"
    torch.save(create_backbone("mobilenet_v1", 7).state_dict(), path)
    with pytest.raises(ValueError) as caught:
        create_backbone(backbone, 2, weights_file=path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"of its tensors missing from the file (first: {first_missing})" in message
    assert "tensors in the file it does not have (first: " in message


def test_timm_file_with_the_classifier_of_another_class_count_still_loads(tmp_path):
    from ferbench.backbones import create_backbone

    path = tmp_path / "mobilenet_v1.pth"
    torch.save(create_backbone("mobilenet_v1", 7).state_dict(), path)
    model = create_backbone("mobilenet_v1", 2, weights_file=path)
    assert model.get_classifier().out_features == 2
