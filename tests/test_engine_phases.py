"""run_study's phases are functions of their own: each can be called (and timed) alone, and nothing
is written to the experiment folder before ``write_inputs``."""

from __future__ import annotations

import numpy as np
import pytest

from ferbench.harness.data.splits import load_splits, save_splits
from ferbench.harness.spec import load_spec
from ferbench.harness.study import engine
from ferbench.harness.study.layout import experiment_paths

TINY = ["grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline]", "grid.seed=[0,1]",
        "data.num_images=300", "train.epochs=1", "resources.cpu=1", "run.name=phases"]


def test_resolve_and_preflight_write_nothing_and_plan_every_arm(tmp_path):
    spec = load_spec("quick", [*TINY, f"run.storage={tmp_path}"])
    run = engine.resolve_experiment(spec, None, resume=False)
    assert run.experiment_dir == (tmp_path / "phases").resolve() and run.remote is None
    engine.preflight_study(run)
    assert [arm["arm_id"] for arm in run.to_run] == ["small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1"]
    assert not run.experiment_dir.exists()  # preflight wrote nothing
    engine.write_inputs(run, ["test"])
    paths = experiment_paths(run.experiment_dir)
    assert paths["grid"].is_file() and paths["splits"].is_file() and paths["manifest"].is_file()
    with pytest.raises(FileExistsError, match="already holds an experiment"):
        engine.resolve_experiment(spec, None, resume=False)


def test_resume_reads_the_stored_splits_and_leaves_them_unchanged(tmp_path):
    spec = load_spec("quick", [*TINY, f"run.storage={tmp_path}"])
    first = engine.resolve_experiment(spec, None, resume=False)
    engine.preflight_study(first)
    engine.write_inputs(first, ["test"])
    # The study's record, edited where the splitter would never put it: one image moved from train to val.
    splits_file = experiment_paths(first.experiment_dir)["splits"]
    fold = load_splits(splits_file)[0]
    moved = fold["train"][0]
    fold = {**fold, "train": fold["train"][1:], "val": np.sort(np.append(fold["val"], moved))}
    save_splits(splits_file, {0: fold})
    stored = splits_file.read_bytes()
    resumed = engine.resolve_experiment(load_spec("quick", TINY), first.experiment_dir, resume=True)
    engine.preflight_study(resumed)
    assert len(resumed.to_run) == 2  # no trial has run yet
    assert moved in resumed.preflight.splits[0]["val"] and moved not in resumed.preflight.splits[0]["train"]
    engine.write_inputs(resumed, ["test"])
    assert splits_file.read_bytes() == stored  # read, never recomputed or overwritten


def test_a_study_that_asks_for_the_dashboard_without_ray_default_says_so_and_runs_without(monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "aiohttp", None)  # as with ray[tune] alone
    with caplog.at_level("WARNING", logger="ferbench"):
        assert engine._dashboard_installed(asked=True) is False
    assert "pip install 'ferbench[cluster]'" in caplog.text
    caplog.clear()
    assert engine._dashboard_installed(asked=False) is False and not caplog.text  # --verbose alone: silent


@pytest.mark.e2e
def test_a_local_ray_starts_without_the_dashboard_unless_asked(tmp_path):
    """In a fresh interpreter (this session's Ray is already up): init_ray serves no dashboard."""
    import os
    import subprocess
    import sys

    code = ("import ray; from ferbench.harness.study.engine import init_ray; init_ray(num_cpus=1); "
            "from ray._private.worker import global_worker as w; print('URL=' + str(w.node.webui_url or ''))")
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "URL=\n" in done.stdout or done.stdout.strip().endswith("URL=")


def test_arms_with_rounds_start_first_and_the_rest_keep_their_grid_order():
    """The pseudo-label arm (teacher and students: the longest trial) is launched first, so it overlaps the
    baselines instead of running alone at the end; the set of arms is unchanged."""
    arms = load_spec("quick").arms()
    ordered = engine.launch_order(arms)
    assert sorted(a["arm_id"] for a in ordered) == sorted(a["arm_id"] for a in arms)
    assert [a["arm_id"] for a in ordered] == [
        "timm-regnetx_002_pretrained_pseudo_label_s0", "small_cnn_random_baseline_s0", "small_cnn_pretrained_baseline_s0",
        "timm-regnetx_002_random_baseline_s0", "timm-regnetx_002_pretrained_baseline_s0"]
    plain = load_spec("quick", ["grid.variant=[baseline]", "grid.exclude=[]"]).arms()
    assert engine.launch_order(plain) == plain
