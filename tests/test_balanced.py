"""Balanced variants: Moravčík's per-class sampling rule, the class weights, a balanced trial's epochs
(in process; the real balanced study through run_study is marked ``e2e``), and the arsirii2023 study's
preflight on a missing or ill-formed RAF-DB path."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from ferbench.harness.variants.balanced.sampling import balanced_epoch_indices, class_weights, target_count
from ferbench.harness.cli.main import main
from ferbench.harness.study.engine import run_study
from ferbench.harness.spec import SpecError, load_spec


def test_every_class_is_sampled_up_to_m_with_minorities_repeated_evenly():
    labels = torch.tensor([0] * 100 + [1] * 30 + [2] * 7 + [3] * 80)
    indices = torch.arange(len(labels)) + 1000  # dataset indices, not positions
    targets = torch.full((1300,), -1)
    targets[indices] = labels
    m = target_count(torch.bincount(labels), 0.8)
    assert m == 80
    generator = torch.Generator().manual_seed(0)
    drawn = balanced_epoch_indices(indices, targets, 0.8, generator)
    assert torch.bincount(targets[drawn]).tolist() == [80, 80, 80, 80]  # K · M images in the epoch
    assert set(drawn.tolist()) <= set(indices.tolist())
    per_image = torch.bincount(drawn - 1000, minlength=len(labels))
    assert set(per_image[labels == 1].tolist()) == {2, 3}  # 80 = 2·30 + 20: every image twice or three times
    assert set(per_image[labels == 2].tolist()) == {11, 12}  # 80 = 11·7 + 3
    assert per_image[labels == 3].tolist() == [1] * 80  # exactly M: each image once
    assert per_image[labels == 0].max() == 1 and per_image[labels == 0].sum() == 80  # subsampled, no repeats
    again = balanced_epoch_indices(indices, targets, 0.8, generator)
    assert not torch.equal(drawn, again)  # a fresh draw every epoch
    assert torch.equal(drawn, balanced_epoch_indices(indices, targets, 0.8, torch.Generator().manual_seed(0)))


def test_class_weights_are_n_over_k_times_class_count():
    targets = torch.tensor([0] * 10 + [1] * 5 + [3] * 85)
    weights = class_weights(targets, 4)
    assert weights.tolist() == pytest.approx([100 / 30, 100 / 15, 0.0, 100 / 255])
    assert weights[targets].mean().item() == pytest.approx(1.0)  # the average image keeps weight 1


def test_balanced_spec_needs_one_method():
    with pytest.raises(SpecError, match="balanced: oversample and class_weighted_loss are both false"):
        load_spec("quick", ["balanced.oversample=false"])
    with pytest.raises(SpecError, match="balanced.fraction"):
        load_spec("quick", ["balanced.fraction=0"])


BALANCED_STUDY = [
    "data.num_images=240", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "grid.backbone=[small_cnn]",
    "grid.init=[random]", "grid.variant=[balanced,pseudo_label+balanced]", "grid.exclude=[]", "balanced.class_weighted_loss=true",
    "pseudo_label.threshold=0.2", "pseudo_label.max_rounds=1", "pseudo_label.epochs_per_round=1", "resources.cpu=1",
]


def _k_times_m(labels: torch.Tensor, train: torch.Tensor) -> int:
    counts = torch.bincount(labels[train])
    return int((counts > 0).sum()) * target_count(counts, 0.8)


def test_a_balanced_trial_trains_on_k_times_m_images_per_epoch():
    """The study below, in process: each arm's trial (built as a worker builds it, on the study's data and
    splits) trains its teacher epochs on K · M images. The study itself runs under ``e2e``."""
    import numpy as np

    from ferbench.harness.study.preflight import run_preflight
    from ferbench.harness.train.trial import StudyPayload, _build_trial

    spec = load_spec("quick", BALANCED_STUDY)
    preflight = run_preflight(spec)
    payload = StudyPayload(spec=spec.model_dump(mode="json"), images=preflight.dataset.images, labels=preflight.dataset.labels,
                           class_names=tuple(preflight.dataset.class_names), splits=preflight.splits, weight_files={})
    expected = _k_times_m(torch.from_numpy(preflight.dataset.labels), torch.from_numpy(preflight.splits[0]["train"]))
    assert sorted(arm["variant"] for arm in preflight.runnable_arms) == ["balanced", "pseudo_label+balanced"]
    for arm in preflight.runnable_arms:
        trial = _build_trial({"arm": arm}, payload)
        train_idx, targets = trial.variant.training_set(trial.labels, trial.split["train"])
        assert np.array_equal(np.sort(train_idx.numpy()), np.sort(preflight.splits[0]["train"]))  # the pool is not in it
        rows = [trial.run_epoch(epoch, 0, epoch, train_idx, targets) for epoch in range(1, spec.train.epochs + 1)]
        assert [row["epoch_images"] for row in rows] == [expected] * spec.train.epochs, arm["variant"]


@pytest.mark.e2e  # the same through run_study on the session's Ray (in process: covered by the test above)
def test_balanced_study_trains_on_k_times_m_images_per_epoch(tmp_path):
    spec = load_spec("quick", [*BALANCED_STUDY, f"run.storage={tmp_path}", "run.name=balanced"])
    outcome = run_study(spec)
    assert set(outcome.statuses.values()) == {"completed"}
    epochs = pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.data.splits import load_splits

    labels = torch.from_numpy(load_dataset(spec.data).labels)
    train = torch.from_numpy(load_splits(outcome.experiment_dir / "ferbench" / "splits.npz")[0]["train"])
    expected = _k_times_m(labels, train)
    for arm_id in outcome.statuses:
        folder = next(p for p in outcome.experiment_dir.glob(f"{arm_id}_*") if p.is_dir())
        rows = pd.read_json(folder / "result.json", lines=True)
        teacher = rows[(rows["round"] == 0) & (rows["round_epoch"] > 0)]
        assert (teacher["epoch_images"] == expected).all()
    assert set(epochs["variant"]) == {"balanced", "pseudo_label+balanced"}


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["run", *argv])
    return code, capsys.readouterr().err


def test_arsirii2023_stops_in_preflight_on_a_missing_or_ill_formed_rafdb_path(tmp_path, capsys):
    import timm

    weights = tmp_path / "mobilenet_v1.safetensors"  # any loadable MobileNet V1 file: only the data should fail
    save_file(timm.create_model("mobilenetv1_100", pretrained=False, num_classes=0).state_dict(), str(weights))
    storage = tmp_path / "results"
    common = ["--storage", str(storage), "--set", "resources.gpu=0", "--set", "resources.cpu=1",
              "--set", f"weights.files.mobilenet_v1={weights}"]
    code, err = _run(capsys, "arsirii2023", *common)
    assert code == 2 and err.strip().splitlines() == [
        "ferbench: error: data.path: format rafdb needs the dataset's file or folder, e.g. --set data.path=/data/RAF-DB/basic"
    ]
    not_rafdb = tmp_path / "RAF-DB"
    (not_rafdb / "Image" / "aligned").mkdir(parents=True)
    code, err = _run(capsys, "arsirii2023", *common, "--set", f"data.path={not_rafdb}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "no EmoLabel/list_patition_label.txt" in lines[0], err
    assert not storage.exists() or not any(storage.iterdir())  # nothing written
    spec = load_spec("arsirii2023", ["data.path=/data/RAF-DB/basic"])
    assert (spec.split.kind, spec.split.unlabeled_fraction, spec.split.val_fraction) == ("official", 0.1, 0.2)
    assert (spec.pseudo_label.threshold, spec.pseudo_label.max_rounds, spec.train.head) == (0.99, 2, "arsirii_pl")
    assert [a["arm_id"] for a in spec.arms()] == ["mobilenet_v1_pretrained_baseline_s0", "mobilenet_v1_pretrained_pseudo_label_s0"]
