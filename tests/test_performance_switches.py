"""The execution switches (harness/train/performance.py): ``auto`` resolves to the fast path on CUDA and
to fp32, deterministic kernels on the CPU; forced bf16 autocast and channels_last run on the CPU
through the training step, evaluation and a trial's epoch. No test needs a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ferbench.backbones import create_backbone, get_backbone_info
from ferbench.harness.train.augment import InputAdapter, random_affine
from ferbench.harness.train.performance import CPU_EVAL_BATCH, CUDA_EVAL_BATCH, apply_process_settings, resolve_execution, select_device
from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.train.trial import StudyPayload, _build_trial
from ferbench.harness.train.loop import predict, train_one_epoch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def spec(*overrides: str):
    return load_spec("quick", ["grid.backbone=[small_cnn]", "grid.variant=[baseline]", "grid.exclude=[]", *overrides])


@pytest.fixture
def torch_state():
    """Process-wide torch switches the tests change, restored afterwards."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.backends.cudnn.benchmark = saved[3]
    torch.utils.deterministic.fill_uninitialized_memory = saved[4]


def test_auto_on_cpu_is_fp32_deterministic_and_keeps_data_on_the_host():
    execution = resolve_execution(spec().train, spec().resources, CPU)
    assert execution.precision == "fp32" and execution.autocast_dtype is None
    assert execution.deterministic and not execution.cudnn_benchmark
    assert not execution.channels_last and not execution.data_on_device
    assert execution.eval_batch_size == CPU_EVAL_BATCH


def test_auto_on_cuda_is_the_fast_path():
    s = spec("resources.gpu=0.25")
    execution = resolve_execution(s.train, s.resources, CUDA)
    assert execution.precision == "bf16" and execution.autocast_dtype is torch.bfloat16
    assert execution.channels_last and execution.data_on_device
    assert execution.cudnn_benchmark and not execution.deterministic
    assert execution.eval_batch_size == CUDA_EVAL_BATCH


def test_explicit_values_win_over_auto():
    s = spec("train.precision=fp32", "train.channels_last=false", "train.data_on_device=false", "train.eval_batch_size=100")
    execution = resolve_execution(s.train, s.resources, CUDA)
    assert (execution.precision, execution.channels_last, execution.data_on_device, execution.eval_batch_size) == ("fp32", False, False, 100)
    forced = spec("train.precision=bf16", "train.channels_last=true", "train.deterministic=false")
    on_cpu = resolve_execution(forced.train, forced.resources, CPU)
    assert on_cpu.precision == "bf16" and on_cpu.channels_last and not on_cpu.deterministic


def test_deterministic_cuda_runs_leave_cudnn_autotuning_off():
    s = spec("train.deterministic=true")
    execution = resolve_execution(s.train, s.resources, CUDA)
    assert execution.deterministic and not execution.cudnn_benchmark
    assert execution.precision == "bf16"  # only the kernel choice is pinned


def test_deterministic_and_cudnn_benchmark_both_forced_on_is_refused():
    with pytest.raises(SpecError, match="train.cudnn_benchmark=true.*train.deterministic=true"):
        spec("train.deterministic=true", "train.cudnn_benchmark=true")


@pytest.mark.parametrize("override", ["train.precision=fp16", "train.eval_batch_size=0", "train.channels_last=sometimes"])
def test_bad_switch_values_are_refused(override):
    with pytest.raises(SpecError, match=override.split("=")[0]):
        spec(override)


def test_device_needs_a_reserved_gpu_and_a_visible_one(monkeypatch):
    assert select_device(0) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(0.5) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(0.5).type == "cuda" and select_device(0) == CPU


def test_process_settings_are_set_both_ways(torch_state):
    fast = spec("train.deterministic=false", "train.cudnn_benchmark=true", "resources.cpu=1")
    apply_process_settings(resolve_execution(fast.train, fast.resources, CPU))
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1
    # the next trial in the same (reused) worker process gets its own settings, not the leftovers
    apply_process_settings(resolve_execution(spec().train, spec().resources, CPU))
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()


def _problem(n: int = 48, size: int = 24):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = (torch.where(labels == 1, 170, 40).view(n, 1, 1) + torch.randint(-30, 31, (n, size, size), generator=g))
    return images.clamp(0, 255).to(torch.uint8), labels


def test_bf16_autocast_and_channels_last_train_and_predict_on_cpu():
    images, labels = _problem()
    info = get_backbone_info("small_cnn")
    adapter = InputAdapter(24, info.in_chans, info.channel_order, info.mean, info.std)
    torch.manual_seed(0)
    model = create_backbone("small_cnn", 2).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = []
    model.features[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    augment = dict(hflip=True, rotation_deg=10.0, zoom=0.1, translate=0.1, shear_deg=0.0)
    stats = [train_one_epoch(model, optimizer, images, labels, torch.arange(48), batch_size=16, adapter=adapter, augment=augment,
                             generator=torch.Generator().manual_seed(0), device=CPU, autocast_dtype=torch.bfloat16,
                             channels_last=True) for _ in range(3)]
    assert all(np.isfinite(s.loss) and 0 <= s.acc <= 1 for s in stats)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights
    fast = predict(model, images, torch.arange(48), batch_size=20, adapter=adapter, device=CPU,
                   autocast_dtype=torch.bfloat16, channels_last=True)
    exact = predict(model, images, torch.arange(48), batch_size=20, adapter=adapter, device=CPU)
    assert fast.dtype == torch.float32 and fast.shape == (48, 2)
    assert torch.allclose(fast, exact, atol=0.1, rtol=0.05)  # bf16 has 8 bits of mantissa


def test_augmentation_draws_from_the_generator_device_whatever_the_batch_dtype():
    x = torch.rand(4, 1, 16, 16)
    settings = dict(hflip=True, rotation_deg=10.0, zoom=0.1, translate=0.1, shear_deg=5.0)
    out = random_affine(x.to(torch.bfloat16), torch.Generator().manual_seed(1), **settings)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    again = random_affine(x, torch.Generator().manual_seed(1), **settings)
    assert torch.equal(again, random_affine(x, torch.Generator().manual_seed(1), **settings))


def _payload(*overrides: str) -> StudyPayload:
    s = spec("data.image_size=24", *overrides)
    images, labels = _problem(40)
    return StudyPayload(spec=s.model_dump(mode="json"), images=images.numpy(), labels=labels.numpy(), class_names=("a", "b"),
                        splits={0: {"train": np.arange(24), "val": np.arange(24, 32), "test": np.arange(32, 40)}},
                        weight_files={})


ARM = {"arm": {"arm_id": "a", "backbone": "small_cnn", "init": "random", "variant": "baseline", "seed": 0}}


def test_a_trial_with_the_gpu_switches_forced_runs_its_epochs_on_cpu(torch_state):
    trial = _build_trial(ARM, _payload("train.precision=bf16", "train.channels_last=true", "train.data_on_device=true",
                                       "train.eval_batch_size=5", "train.deterministic=false", "resources.cpu=1"))
    assert trial.execution.precision == "bf16" and trial.execution.eval_batch_size == 5
    conv = trial.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert trial.eval_kwargs["autocast_dtype"] is torch.bfloat16 and trial.eval_kwargs["batch_size"] == 5
    rows = [trial.run_epoch(e, 0, e, trial.split["train"], trial.labels) for e in range(2)]
    assert rows[1]["train_images_per_s"] > 0 and np.isfinite(rows[1]["val_loss"]) and rows[1]["precision"] == "bf16"
    assert trial.final_measures()["infer_images_per_s"] > 0


def test_a_default_trial_on_cpu_is_fp32_and_reruns_identically(torch_state):
    def run(fill_uninitialized: bool = False) -> list[tuple]:
        trial = _build_trial(ARM, _payload("resources.cpu=1"))
        assert trial.execution.precision == "fp32" and not trial.execution.channels_last
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert not torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = fill_uninitialized
        rows = [trial.run_epoch(e, 0, e, trial.split["train"], trial.labels) for e in range(3)]
        return [(r["train_acc"], r["train_loss"], r["val_acc"], r["val_loss"]) for r in rows]

    first = run()
    assert run() == first
    # torch's NaN fill of new tensors (left off for speed) changes no number: every output is written
    assert run(fill_uninitialized=True) == first


def _run_quick_benchmark(section: str, tmp_path) -> tuple[str, dict]:
    """``benchmarks/run.py --quick --only SECTION`` in a subprocess: its stdout and its JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "results.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--only", section, "--json", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.e2e  # the benchmark's bare loop in a process of its own, started twice
@pytest.mark.usefixtures("benchmarks_on_path")  # benchmarks/ imports under plain pytest too
def test_bare_loop_process_serves_passes_before_and_after_and_reports_its_failure():
    """The benchmark's bare loop stays warm in its own process between the passes before a trial and
    those after it; a loop that cannot start raises with the child's own error, not a broken pipe."""
    from benchmarks.bare_loop import BareLoopProcess

    with BareLoopProcess("small_cnn", size=16, train_images=64, batch_size=32, threads=1) as bare:
        pid = bare._proc.pid
        before, after = bare.timed_passes(2), bare.timed_passes(1)
        assert bare._proc.pid == pid and bare._proc.poll() is None
    assert len(before) == 2 and len(after) == 1 and all(rate > 0 for rate in before + after)
    assert bare._proc.returncode == 0  # closing its stdin ends it
    with pytest.raises(RuntimeError, match=r"(?s)bare loop of no_such_net failed \(exit 1\).*unknown backbone 'no_such_net'"):
        BareLoopProcess("no_such_net", size=16, train_images=64)


@pytest.mark.usefixtures("benchmarks_on_path")  # benchmarks/ imports under plain pytest too
def test_study_overhead_splits_into_once_per_study_and_per_trial_and_finds_the_trial_length_meeting_the_target():
    """Grids made from a known overhead (18 slot-s once, 0.5 per trial, 4 s trials on 2 slots): the
    split recovers both, and trials of the length it names put a grid of 16 exactly at the target."""
    from benchmarks.study_overhead import TARGET, split_fixed_and_per_trial

    def grid(n: int, own_each: float) -> dict:
        return {"trials": n, "slots": 2, "trial_own_s": n * own_each, "mean_trial_own_s": own_each,
                "study_s": (n * own_each + 18 + 0.5 * n) / 2}

    split = split_fixed_and_per_trial(grid(8, 4.0), grid(16, 4.0))
    assert split["fixed_slot_s"] == pytest.approx(18) and split["per_trial_slot_s"] == pytest.approx(0.5)
    assert split["per_trial_share"] == pytest.approx(0.5 / 4.0)
    long = grid(16, split["target_trial_s"])
    assert (long["study_s"] * 2 - long["trial_own_s"]) / long["trial_own_s"] == pytest.approx(TARGET.bound)


@pytest.mark.usefixtures("benchmarks_on_path")  # benchmarks/ imports under plain pytest too
def test_trial_profile_files_each_sample_under_what_its_line_does():
    """py-spy's raw stacks are filed by the innermost ``harness/train/loop.py`` frame, by the text of
    the line (forward, backward, the harness's own gather), not by a line number that moves."""
    import inspect

    from benchmarks.profile_trial import classify, train_one_epoch_steps
    from ferbench.harness.train.loop import train_one_epoch

    source, first = inspect.getsourcelines(train_one_epoch)
    line_of = lambda text: first + next(i for i, line in enumerate(source) if text in line)  # noqa: E731
    steps = train_one_epoch_steps()
    worker = "main_loop (ray/_private/worker.py:1069);run_trial (harness/train/trial.py:310);run_epoch (harness/train/trial.py:205)"

    def at(line: int, leaf: str = "") -> str:
        return f"{worker};train_one_epoch (harness/train/loop.py:{line}){';' + leaf if leaf else ''}"

    assert classify(at(line_of("loss.backward()"), "backward (torch/_tensor.py:625)"), steps) == "train: backward"
    assert classify(at(line_of("model(")), steps) == "train: model forward"
    assert classify(at(line_of("x = adapter(")), steps) == "train: harness: gather + input adapter"
    assert classify(at(line_of("task.loss(")), steps) == "train: loss"
    assert classify(at(line_of("correct +=")), steps) == "train: harness: bookkeeping"
    assert classify(f"{worker};predict (harness/train/loop.py:114)", steps) == "evaluation"
    assert classify("run_trial (harness/train/trial.py:322);_save (torch/serialization.py:1312)", steps).startswith("checkpoint")
    assert classify("Condition.wait (threading.py:327)", steps) == "other (Ray, waiting)"


@pytest.mark.usefixtures("benchmarks_on_path")  # benchmarks/ imports under plain pytest too
def test_trial_profile_refuses_a_size_that_is_not_a_number_in_one_line():
    from benchmarks.profile_trial import main

    with pytest.raises(SystemExit, match=r"usage: profile_trial.py .*got 'resnet50 big'"):
        main(["resnet50", "big"])


@pytest.mark.usefixtures("benchmarks_on_path")  # benchmarks/ imports under plain pytest too
@pytest.mark.slow
def test_trial_profile_samples_a_running_trial_worker():
    """``benchmarks/profile_trial.py`` finds the trial's Ray worker, samples it with py-spy and
    splits the samples into shares, most of them the model's own steps."""
    from benchmarks.profile_trial import profile

    result = profile("small_cnn", 32, 512, epochs=12, seconds=3, warmup_s=1)
    shares = result["shares"]
    assert result["samples"] > 20 and sum(shares.values()) == pytest.approx(1)
    assert shares.get("train: model forward", 0) + shares.get("train: backward", 0) > 0.3
    assert 0 <= result["harness_share_of_training"] < 0.5 and len(result["train_images_per_s"]) == 12


@pytest.mark.slow
def test_benchmark_entry_runs_and_writes_its_targets(tmp_path):
    """``benchmarks/run.py --quick`` on the data-path section: the table and the JSON with targets."""
    stdout, results = _run_quick_benchmark("data", tmp_path)
    assert "CSV cached load / first load" in stdout and "targets met" in stdout
    assert results["machine"]["cpu_cores"] >= 1 and results["data"]["csv"]["rows"] == 2000
    assert [t["figure"] for t in results["targets"]] == ["CSV cached load / first load"]
    csv = results["data"]["csv"]  # the cached figure is the median of its repeated loads
    assert len(csv["cached_loads_s"]) == 5 and csv["cached_load_s"] == sorted(csv["cached_loads_s"])[2]
    assert csv["cached_over_first"] == pytest.approx(csv["cached_load_s"] / csv["first_load_s"])


@pytest.mark.slow
def test_benchmark_overhead_section_interleaves_trials_with_bare_runs(tmp_path):
    """``--quick --only overhead``: two small_cnn trials, bare passes before, between and after them;
    each trial's ratio is over the mean of the bare passes around it, the figure their median."""
    from statistics import mean, median

    stdout, results = _run_quick_benchmark("overhead", tmp_path)
    rows = results["overhead"]
    assert [(r["backbone"], r["size"]) for r in rows] == [("small_cnn", 48)]
    for r in rows:
        assert [len(e) for e in r["harness_epochs_images_per_s"]] == [3, 3]
        blocks = [mean(block) for block in r["bare_epochs_images_per_s"]]
        assert [len(block) for block in r["bare_epochs_images_per_s"]] == [2, 2, 2]
        harness = [mean(epochs[1:]) for epochs in r["harness_epochs_images_per_s"]]
        ratios = [h / ((blocks[i] + blocks[i + 1]) / 2) for i, h in enumerate(harness)]
        assert r["ratios"] == pytest.approx(ratios) and r["ratio"] == pytest.approx(median(ratios))
        assert r["harness_images_per_s"] == pytest.approx(median(harness)) and r["bare_images_per_s"] == pytest.approx(mean(blocks))
        assert f"harness/bare {r['backbone']} 48px" in stdout


def test_ray_workers_start_with_one_allocator_arena(local_ray):
    """glibc reads MALLOC_ARENA_MAX when a process starts: it must be in a worker's environment at
    launch (``/proc/self/environ``), not set later in Python, in tasks and in actors (Tune's trials).
    Probed on the session's Ray, which ``init_ray`` started as a study starts it."""
    ray = local_ray

    from ferbench.harness.train.performance import TRIAL_WORKER_ENV

    def launch_environment() -> dict:
        entries = open("/proc/self/environ").read().split("\0")
        return dict(entry.split("=", 1) for entry in entries if "=" in entry)

    @ray.remote(num_cpus=0)
    class Probe:
        def environment(self) -> dict:
            return launch_environment()

    task_env = ray.get(ray.remote(num_cpus=0)(launch_environment).remote())
    probe = Probe.remote()
    actor_env = ray.get(probe.environment.remote())
    ray.kill(probe)
    assert TRIAL_WORKER_ENV == {"MALLOC_ARENA_MAX": "1"}
    for env in (task_env, actor_env):
        assert env.get("MALLOC_ARENA_MAX") == "1"


@pytest.mark.e2e  # a whole (tiny) study through harness/run.py in a cgroup of its own
@pytest.mark.usefixtures("benchmarks_on_path")
def test_first_run_counts_the_cpu_of_every_process_the_study_starts():
    """benchmarks/first_run.py: the cgroup's counters hold the driver's, Ray's daemons' and the trial
    workers' CPU time; the driver alone (its own rusage) is a part of it, and the cgroup is removed."""
    import os
    import sys

    from benchmarks import first_run

    try:
        probe, _ = first_run._new_cgroup(f"ferbench-probe-{os.getpid()}")
        probe.rmdir()
    except OSError as err:
        reason = f"creating a cgroup needs root on Linux (run the tests as root): {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    run_py = Path(__file__).resolve().parents[1] / "harness" / "run.py"
    tiny = ["--set", "data.num_images=200", "--set", "train.epochs=1", "--set", "grid.backbone=[small_cnn]",
            "--set", "grid.init=[random]", "--set", "grid.variant=[baseline]", "--set", "grid.exclude=[]"]
    row = first_run.measure(sys.executable, tiny, run_py)
    assert row["returncode"] == 0, row.get("stderr_tail")
    assert row["user_s"] > 0 and row["cpu_s"] == pytest.approx(row["user_s"] + row["sys_s"])
    # A Ray study runs in several processes: their CPU time together exceeds what one interpreter
    # importing torch and the CLI costs (about 5 s on 2 cores); a cgroup missing the children would not.
    assert row["cpu_s"] > 8
    parents = (first_run.CGROUP_ROOT, first_run.CGROUP_ROOT / "cpuacct")
    assert not [p for parent in parents for p in parent.glob("ferbench-first-run-*")]  # removed after the run
