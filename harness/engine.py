"""The study engine: preflight, experiment folder, one Ray Tune trial per grid arm, report.

Follows Ray Tune's plain-function model: ``run_trial`` wrapped with ``with_parameters``
(dataset in the object store once) and ``with_resources`` (per-trial CPU/GPU from the spec),
a FIFO scheduler (a benchmark runs every arm to its full budget), a checkpoint every epoch,
retries that resume from it, and ``Tuner.restore`` for ``--resume``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.experiment import (
    default_experiment_name,
    experiment_paths,
    read_json,
    read_stored_spec,
    write_experiment_inputs,
)
from harness.preflight import Preflight, run_preflight
from harness.spec import StudySpec
from harness.splits import load_splits

# Ray's periodic "snapshot" warnings are noise for a study that checkpoints every epoch.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class StudyOutcome:
    experiment_dir: Path
    report_dir: Path
    statuses: dict[str, str]  # arm_id → completed | failed | unavailable | incomplete

    @property
    def finished(self) -> bool:
        return "incomplete" not in self.statuses.values()


def init_ray(num_cpus: int | None = None, verbose: bool = False) -> None:
    """Attach to a running cluster when ``RAY_ADDRESS`` names one, otherwise start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    quiet = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **quiet)


def _trial_dirname(trial) -> str:
    return f"{trial.config['arm']['arm_id']}_{trial.trial_id}"


def _build_trainable(spec: StudySpec, preflight: Preflight):
    from ray import tune

    from harness.trainable import StudyPayload, fault_injection_from_env, run_trial

    dataset = preflight.dataset
    payload = StudyPayload(
        spec=spec.model_dump(mode="json"),
        images=dataset.images,
        labels=dataset.labels,
        class_names=dataset.class_names,
        splits=preflight.splits,
        weight_files=preflight.weight_files,
        fault_injection=fault_injection_from_env(),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, payload=payload), resources)


def _run_config(spec: StudySpec, experiment_dir: Path, callbacks: list, verbose: bool):
    from ray import tune

    return tune.RunConfig(
        name=experiment_dir.name,
        storage_path=str(experiment_dir.parent),
        failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.run.keep_checkpoints),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=callbacks,
        verbose=2 if verbose else 0,
    )


def run_study(
    spec: StudySpec,
    *,
    experiment_dir: Path | None = None,
    resume: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
) -> StudyOutcome:
    """Run (or, with ``resume``, continue) a study and render its report."""
    from ray import tune

    from harness.progress import ProgressPrinter
    from reports import build_report, trial_statuses

    if resume:
        if experiment_dir is None or not experiment_paths(experiment_dir)["grid"].is_file():
            raise FileNotFoundError(f"nothing to resume at {experiment_dir}")
        spec = read_stored_spec(experiment_dir)
    else:
        storage = Path(spec.run.storage).expanduser().resolve()
        experiment_dir = experiment_dir or storage / (spec.run.name or default_experiment_name(spec))
        if experiment_paths(experiment_dir)["grid"].exists():
            raise FileExistsError(
                f"{experiment_dir} already holds an experiment; use --resume to continue it or choose another --set run.name"
            )
    experiment_dir = Path(experiment_dir).resolve()

    preflight = run_preflight(spec)  # raises PreflightError before anything is written
    if resume:
        preflight.splits = load_splits(experiment_paths(experiment_dir)["splits"])
        preflight.arms = read_json(experiment_paths(experiment_dir)["grid"])
    else:
        write_experiment_inputs(experiment_dir, spec, preflight, command or sys.argv)
    _announce(spec, preflight, experiment_dir, resume)

    runnable = preflight.runnable_arms
    if runnable:
        already = sum(s == "completed" for s in trial_statuses(experiment_dir).values()) if resume else 0
        progress = ProgressPrinter(len(runnable), spec.train.epochs, already_finished=already)
        init_ray(verbose=verbose)
        if not verbose:  # ProgressPrinter speaks instead of Ray's reporter and trial tracebacks
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter prints nothing at verbosity 0
            for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        trainable = _build_trainable(spec, preflight)
        if resume:
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_errored=True)
            # Restored tuners keep their run config; the progress printer is per session.
            tuner._local_tuner._run_config.callbacks = [progress]
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"arm": tune.grid_search(runnable)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.run.max_concurrent, trial_dirname_creator=_trial_dirname
                ),
                run_config=_run_config(spec, experiment_dir, [progress], verbose),
            )
        tuner.fit()

    report_dir = build_report(experiment_dir)
    return StudyOutcome(experiment_dir, report_dir, trial_statuses(experiment_dir))


def _describe_split(folds: dict) -> str:
    if len(folds) == 1:
        split = next(iter(folds.values()))
        return f"{'/'.join(split)} {'/'.join(str(len(idx)) for idx in split.values())}"
    tests = [len(split["test"]) for split in folds.values()]
    return f"{len(folds)} subject-exclusive folds, test parts of {min(tests)}–{max(tests)} images"


def _announce(spec: StudySpec, preflight: Preflight, experiment_dir: Path, resume: bool) -> None:
    dataset = preflight.dataset
    verb = "Resuming" if resume else "Study"
    print(f"{verb} {spec.study!r}: {len(preflight.arms)} arms, {spec.train.epochs} epochs each → {experiment_dir}")
    print(
        f"  data: {dataset.name}, {len(dataset)} images {dataset.image_size[0]}×{dataset.image_size[1]}, "
        f"split {_describe_split(preflight.splits)}"
    )
    unavailable: dict[str, list[str]] = {}  # reason → arms: one line per missing weight file
    for arm in preflight.arms:
        if arm["status"] == "unavailable":
            unavailable.setdefault(arm["reason"], []).append(arm["arm_id"])
    for reason, arms in unavailable.items():
        print(f"  unavailable: {', '.join(arms)}\n    {reason}")
