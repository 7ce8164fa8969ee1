"""Study overhead: how a study's wall time compares with the work of its trials, for N trials.

A trial's own time is the sum of its rows' ``epoch_wall_s``: training, evaluation, the test pass
and the inference measurement — everything the study asked for. The study's time is Ray start-up
plus ``Tuner.fit`` (scheduling, trial processes, checkpoints, ``tune.report``). With ``slots``
trials running at once, the overhead is (study time × slots − Σ own time) / Σ own time: the share
of the CPU-slot time the grid paid for that was not its trials' work. Preflight (the dataset) and
report rendering are shown beside it: they are the study's input and output, paid once.
"""

from __future__ import annotations

from benchmarks.common import Target, run_study_child, study_overrides

TARGET = Target(0.10, at_least=False)  # at N = 16
RAY_CPUS = 2
TRIAL_CPU = 1


def measure(n_trials: int, num_images: int, epochs: int, reuse_actors: bool = False) -> dict:
    child = run_study_child(
        study_overrides("small_cnn", num_images=num_images, epochs=epochs, seeds=list(range(n_trials)), cpu=TRIAL_CPU,
                        ratios=(0.8, 0.1, 0.1)),
        ray_cpus=RAY_CPUS, reuse_actors=reuse_actors,
    )
    t = child.timings
    own = sum(float(row["epoch_wall_s"]) for row in child.epochs)
    trained = [r for r in child.epochs if r["epoch"] >= 1]
    slots = min(n_trials, RAY_CPUS // TRIAL_CPU)
    study = t["ray_start_s"] + t["fit_s"]
    return {
        "trials": n_trials, "slots": slots, "reuse_actors": reuse_actors, "trial_own_s": own, "mean_trial_own_s": own / n_trials,
        "ray_start_s": t["ray_start_s"], "fit_s": t["fit_s"], "study_s": study,
        "preflight_s": t.get("preflight_s"), "report_s": t.get("report_s"), "run_study_s": t["study_s"],
        "overhead": (study * slots - own) / own,
        "overhead_per_trial_s": (study * slots - own) / n_trials,
        "train_images_per_s_mean": sum(float(r["train_images_per_s"]) for r in trained) / max(1, len(trained)),
    }


def run(quick: bool = False, reuse_actors: bool = False) -> list[dict]:
    sizes = (2, 4) if quick else (2, 8, 16)
    num_images, epochs = (200, 1) if quick else (600, 2)
    results = []
    for n in sizes:
        row = measure(n, num_images, epochs, reuse_actors)
        print(f"  study N={n}: study {row['study_s']:.1f} s, Σ trials {row['trial_own_s']:.1f} s over {row['slots']} slots, "
              f"overhead {row['overhead']:.1%}", flush=True)
        results.append(row)
    return results
