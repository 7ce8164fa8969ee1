"""Sealed checkpoints: a cut one is never taken for a good one (harness/study/checkpoints.py)."""

from __future__ import annotations

import io
import json
import os

import torch

from ferbench.harness.study.checkpoints import (
    CHECKPOINT_FILE, HISTORY_FILE, SEAL_FILE, newest_history, read_checkpoint, read_history, trial_folder,
    write_checkpoint_files,
)


def _state_bytes(epoch: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "model": {"w": torch.full((64,), float(epoch))}}, buffer)
    return buffer.getvalue()


def _checkpoint(trial_dir, index: int, epochs: int):
    folder = trial_dir / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    write_checkpoint_files(folder, _state_bytes(epochs), [{"epoch": e} for e in range(epochs + 1)])
    return folder


def test_an_intact_checkpoint_reads_back_its_state_and_history(tmp_path):
    folder = _checkpoint(tmp_path, 0, 2)
    state, history = read_checkpoint(folder)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.full((64,), 2.0))
    assert history == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}] == read_history(folder)


def test_cut_empty_or_missing_files_make_a_checkpoint_not_intact(tmp_path):
    cases = {
        "empty history": lambda f: (f / HISTORY_FILE).write_text(""),
        "history cut mid-way": lambda f: (f / HISTORY_FILE).write_bytes((f / HISTORY_FILE).read_bytes()[:7]),
        "weights cut": lambda f: (f / CHECKPOINT_FILE).write_bytes((f / CHECKPOINT_FILE).read_bytes()[:100]),
        "weights missing": lambda f: (f / CHECKPOINT_FILE).unlink(),
        "seal empty": lambda f: (f / SEAL_FILE).write_text(""),
        # the same length, other bytes: only the hash tells
        "weights altered": lambda f: (f / CHECKPOINT_FILE).write_bytes(bytes(reversed((f / CHECKPOINT_FILE).read_bytes()))),
    }
    for i, (case, damage) in enumerate(cases.items()):
        folder = _checkpoint(tmp_path / case.replace(" ", "_"), i, 3)
        damage(folder)
        assert read_checkpoint(folder) is None, case
    assert read_history(tmp_path / "weights_cut" / "checkpoint_000002") is not None  # the history alone is intact


def test_a_checkpoint_of_an_earlier_version_without_a_seal_counts_when_it_parses(tmp_path):
    folder = _checkpoint(tmp_path, 0, 1)
    (folder / SEAL_FILE).unlink()
    assert read_checkpoint(folder)[1] == [{"epoch": 0}, {"epoch": 1}]
    (folder / HISTORY_FILE).write_text('[{"epoch": 0}, {"ep')
    assert read_history(folder) is None


def test_readers_fall_back_to_the_newest_intact_checkpoint(tmp_path):
    _checkpoint(tmp_path, 1, 1)
    _checkpoint(tmp_path, 2, 2)
    cut = _checkpoint(tmp_path, 10, 3)  # numbered after 2: newest by number, not by name order alone
    (cut / HISTORY_FILE).write_text("")
    assert [row["epoch"] for row in newest_history(tmp_path)] == [0, 1, 2]
    assert newest_history(tmp_path / "absent") == []


def test_the_arm_folder_that_got_furthest_is_chosen_and_a_longer_arm_id_is_no_match(tmp_path):
    def trial(name: str, epochs: int | None, age: int):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({}))
        if epochs is not None:
            _checkpoint(folder, 0, epochs)
        os.utime(folder, (1_000_000 + age, 1_000_000 + age))
        return folder

    arm, longer = "timm:x_random_baseline_s0", "timm:x_random_baseline_s0_y_random_baseline_s0"
    old = trial(f"{arm}_ab12c_00000", 3, age=0)
    trial(f"{arm}_de34f_00000", None, age=10)  # resumed, cut before its first checkpoint
    trial(f"{longer}_ab12c_00001", 9, age=20)  # another arm whose id starts with this one's
    (tmp_path / f"{arm}_99999_00002").mkdir()  # no params.json: not a trial folder
    assert trial_folder(tmp_path, arm, [arm, longer]) == old
    newer = trial(f"{arm}_0aa0a_00000", 5, age=30)
    assert trial_folder(tmp_path, arm, [arm, longer]) == newer
    assert trial_folder(tmp_path, longer, [arm, longer]).name == f"{longer}_ab12c_00001"
    assert trial_folder(tmp_path, "vgg_face_pretrained_baseline_s0", [arm]) is None
