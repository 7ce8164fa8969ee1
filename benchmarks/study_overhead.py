"""Study overhead: how a study's wall time compares with the work of its trials, for N trials.

A trial's own time is the sum of its rows' ``epoch_wall_s``: training, evaluation, the test pass
and the inference measurement — everything the study asked for. The study's time is Ray start-up
plus ``Tuner.fit`` (scheduling, trial processes, checkpoints, ``tune.report``). With ``slots``
trials running at once, the overhead is (study time × slots − Σ own time) / Σ own time: the share
of the CPU-slot time the grid paid for that was not its trials' work. Preflight (the dataset) and
report rendering are shown beside it: they are the study's input and output, paid once.

The overhead splits into what a study pays once (Ray start-up, the first trial processes' start
and imports) and what every further trial adds: the slope between the two largest grids. From those two follows the trial length at which a grid of 16
meets the target (``target_trial_s``): the grids here use short trials so that the section is quick.
"""

from __future__ import annotations

from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.10, at_least=False)  # at N = 16
RAY_CPUS = 2
TRIAL_CPU = 1


def measure(n_trials: int, num_images: int, epochs: int, reuse_workers: bool = True) -> dict:
    child = run_study_child(
        study_overrides("small_cnn", num_images=num_images, epochs=epochs, seeds=list(range(n_trials)), cpu=TRIAL_CPU,
                        ratios=(0.8, 0.1, 0.1), extra=[f"run.reuse_workers={str(reuse_workers).lower()}"]),
        ray_cpus=RAY_CPUS,
    )
    t = child.timings
    own = sum(float(row["epoch_wall_s"]) for row in child.epochs)
    trained = [r for r in child.epochs if r["epoch"] >= 1]
    slots = min(n_trials, RAY_CPUS // TRIAL_CPU)
    study = t["ray_start_s"] + t["fit_s"]
    return {
        "trials": n_trials, "slots": slots, "reuse_workers": reuse_workers, "trial_own_s": own, "mean_trial_own_s": own / n_trials,
        "ray_start_s": t["ray_start_s"], "fit_s": t["fit_s"], "study_s": study,
        "preflight_s": t.get("preflight_s"), "report_s": t.get("report_s"), "run_study_s": t["study_s"],
        "overhead": (study * slots - own) / own,
        "overhead_per_trial_s": (study * slots - own) / n_trials,
        "train_images_per_s_mean": sum(float(r["train_images_per_s"]) for r in trained) / max(1, len(trained)),
    }


def split_fixed_and_per_trial(small: dict, large: dict) -> dict:
    """Slot-seconds of overhead a study pays once, and each trial beyond that, from two grid sizes."""
    slot_overhead = [r["study_s"] * r["slots"] - r["trial_own_s"] for r in (small, large)]
    per_trial = (slot_overhead[1] - slot_overhead[0]) / (large["trials"] - small["trials"])
    fixed = slot_overhead[1] - per_trial * large["trials"]
    return {"per_trial_slot_s": per_trial, "fixed_slot_s": fixed, "per_trial_share": per_trial / large["mean_trial_own_s"],
            "target_trial_s": shortest_trial_within_target(fixed, per_trial, large["trials"])}


def shortest_trial_within_target(fixed_slot_s: float, per_trial_slot_s: float, n_trials: int) -> float:
    """A trial's own time from which a grid of ``n_trials`` meets ``TARGET``: the overhead
    (fixed + n × per-trial) / (n × own) falls as trials grow, and is the target's bound at this length."""
    return (fixed_slot_s / n_trials + per_trial_slot_s) / TARGET.bound


def run(quick: bool = False, reuse_workers: bool = True) -> dict:
    sizes = (2, 4) if quick else (2, 8, 16)
    num_images, epochs = (200, 1) if quick else (600, 2)
    grids = []
    for n in sizes:
        row = measure(n, num_images, epochs, reuse_workers)
        print(f"  study N={n}: study {row['study_s']:.1f} s, Σ trials {row['trial_own_s']:.1f} s over {row['slots']} slots, "
              f"overhead {row['overhead']:.1%}", flush=True)
        grids.append(row)
    split = split_fixed_and_per_trial(grids[-2], grids[-1])
    print(f"  study: {split['fixed_slot_s']:.1f} slot-s once per study, {split['per_trial_slot_s']:.2f} slot-s per trial "
          f"({split['per_trial_share']:.1%} of a trial's own time); "
          f"N={sizes[-1]} meets ≤ {TARGET.bound:.0%} overhead with trials of {split['target_trial_s']:.1f} s or more", flush=True)
    return {"grids": grids, **split}
