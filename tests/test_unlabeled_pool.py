"""An external unlabeled pool (``pseudo_label.unlabeled_path``): read in the training data's form,
its labels never read, and a real pseudo-labelling study on SynthFER that uses one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ferbench.harness.study.engine import run_study
from ferbench.harness.data.formats.common import DataError
from ferbench.harness.study.preflight import PreflightError
from ferbench.harness.spec import load_spec
from ferbench.harness.data.synthfer import generate_synthfer
from ferbench.harness.study.layout import ROUNDS_FILE
from ferbench.harness.data.unlabeled_pool import load_unlabeled_pool
from helpers import PL_ARM, PL_STUDY as STUDY, only_trial_folder as _trial_dir

HAPPY = 3  # FER2013 class order


def _write_pool(folder: Path, count: int = 40, size: int = 32) -> list[Path]:
    """SynthFER faces of one class (happy), ``size``×``size`` RGB PNGs in nested folders named after
    other classes (class folders must not be read as labels), plus one file that is not an image."""
    faces = generate_synthfer(num_images=count * 8, image_size=size, seed=11, label_noise=0.0)
    happy = faces.images[faces.labels == HAPPY][:count]
    paths = []
    for i, face in enumerate(happy):
        path = folder / ("sad" if i % 2 else "angry") / f"face_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).convert("RGB").save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"not a png")
    return paths


def test_a_pool_is_brought_to_the_training_images_size_and_channels(tmp_path):
    paths = _write_pool(tmp_path, count=6, size=32)
    grey = load_unlabeled_pool(str(tmp_path), image_shape=(24, 24))
    assert grey.images.shape == (6, 24, 24) and grey.images.dtype == np.uint8
    assert grey.notes["resized"] == 6 and grey.notes["converted"] == 6 and grey.notes["converted_to"] == "grayscale"
    assert [item["path"] for item in grey.notes["skipped"]] == [str(tmp_path / "broken.png")]
    expected = np.asarray(Image.open(sorted(paths)[0]).convert("L").resize((24, 24), Image.Resampling.BILINEAR))
    assert np.array_equal(grey.images[0], expected)  # files in sorted path order
    colour = load_unlabeled_pool(str(tmp_path), image_shape=(32, 32, 3))
    assert colour.images.shape == (6, 32, 32, 3) and colour.notes["resized"] == 0 and colour.notes["converted"] == 0
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        load_unlabeled_pool(str(tmp_path), image_shape=(24, 24), strict=True)


def test_a_pixels_csv_pool_ignores_its_other_columns(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (3, 16 * 16))
    csv = tmp_path / "pool.csv"
    csv.write_text("emotion,pixels\n" + "".join(f"9,{' '.join(map(str, row))}\n" for row in rows))
    pool = load_unlabeled_pool(str(csv), image_shape=(16, 16))
    assert np.array_equal(pool.images.reshape(3, -1), rows)
    (tmp_path / "bad.csv").write_text("emotion,Usage\n1,Training\n")
    with pytest.raises(DataError, match="bad.csv has no 'pixels' column"):
        load_unlabeled_pool(str(tmp_path / "bad.csv"), image_shape=(16, 16))


def test_a_missing_or_empty_pool_fails_preflight_naming_the_key(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PreflightError, match=f"pseudo_label.unlabeled_path: {missing} does not exist"):
        run_study(load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "split.unlabeled_fraction=0",
                                      f"pseudo_label.unlabeled_path={missing}", f"run.storage={tmp_path}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match="empty holds no image files"):
        run_study(load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "split.unlabeled_fraction=0",
                                      f"pseudo_label.unlabeled_path={tmp_path / 'empty'}", f"run.storage={tmp_path}"]))
    assert not any(p.name.startswith("quick") for p in tmp_path.iterdir())  # nothing written


@pytest.mark.e2e  # a whole study (the pool's reading and placement: the tests above)
def test_a_study_pseudo_labels_an_external_pool_of_another_size_and_channel_count(tmp_path):
    """A 32×32 RGB pool of happy faces for a 24×24 grey dataset: converted, predicted by the teacher,
    added with its predicted labels, precision unknown; classes the teacher never predicts get none."""
    from ferbench.backbones import create_backbone, get_backbone_info
    from ferbench.harness.train.augment import InputAdapter
    from ferbench.harness.train.loop import predict

    paths = _write_pool(tmp_path / "pool")
    spec = load_spec("quick", [*STUDY, "grid.variant=[pseudo_label]", "split.unlabeled_fraction=0", "pseudo_label.max_rounds=1",
                               f"pseudo_label.unlabeled_path={tmp_path / 'pool'}", f"run.storage={tmp_path}", "run.name=external"])
    outcome = run_study(spec)
    assert outcome.statuses == {PL_ARM: "completed"}
    folder = _trial_dir(outcome, PL_ARM)
    stored = json.loads((folder / ROUNDS_FILE).read_text())
    assert stored["pool_size"] == len(paths) and stored["pool_labelled"] is False

    # The teacher's predictions on the pool, recomputed here from the files, select the round's images.
    dataset_size = spec.data.num_images
    teacher = [p for p in folder.glob("checkpoint_*") if torch.load(p / "checkpoint.pt", weights_only=True)["epoch"] == spec.train.epochs]
    model = create_backbone("small_cnn", 7)
    model.load_state_dict(torch.load(teacher[0] / "checkpoint.pt", weights_only=True)["model"])
    info = get_backbone_info("small_cnn")
    pool = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("L").resize((24, 24), Image.Resampling.BILINEAR)) for p in sorted(paths)]))
    probabilities = torch.softmax(predict(model, pool, torch.arange(len(pool)), batch_size=64,
                                          adapter=InputAdapter(24, info.in_chans, info.channel_order, info.mean, info.std),
                                          device=torch.device("cpu")), dim=1)
    chosen = probabilities.max(1).values > spec.pseudo_label.threshold
    round_1 = np.load(folder / "pseudo_label_round1.npz")
    assert round_1["candidates"].tolist() == list(range(dataset_size, dataset_size + len(paths)))  # after the dataset's images
    assert np.allclose(round_1["probabilities"], probabilities.numpy(), atol=1e-5)
    assert round_1["pseudo_indices"].tolist() == (dataset_size + torch.nonzero(chosen).flatten()).tolist()
    assert round_1["pseudo_labels"].tolist() == probabilities.argmax(1)[chosen].tolist()

    rounds = pd.read_csv(outcome.report_dir / "tables" / "pseudo_label_rounds.csv")
    added = int(chosen.sum())
    assert rounds["images_added"].tolist() == [0, added] and added > 0
    assert rounds["pseudo_precision"].isna().all() and rounds["added_precision"].isna().all()  # no true labels exist
    per_class = pd.read_csv(outcome.report_dir / "tables" / "pseudo_label_per_class.csv")
    student = per_class[per_class["round"] == 1].set_index("class")
    never = student.index[student["pseudo_labelled"] == 0]
    assert len(never) > 0 and student["test_f1"].notna().all()  # such classes still get their scores
    epochs = pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")
    labelled = epochs[epochs["round"] == 0]["train_size"].iloc[0]
    assert (epochs[epochs["round"] == 1]["train_size"] == labelled + added).all()
    report = (outcome.report_dir / "report.md").read_text()
    assert f"external, without labels: {len(paths)} images from `{tmp_path / 'pool'}`" in report
    assert f"External unlabeled pool (`pseudo_label.unlabeled_path`): {len(paths)} images" in report
    assert f"{len(paths)} resized to 24×24, {len(paths)} converted to grayscale" in report and "broken.png" in report
