"""Experiment trackers: the spec's ``run.loggers`` as Ray Tune's own logger callbacks (MLflow, W&B).

Tune's callbacks run on the driver (MLflow) or in an actor beside it (W&B), so trials need neither the
tracker's package nor its credentials nor a network route. Each grid arm becomes one run named by its
arm id, with the arm's parameters (backbone, init, variant, seed, fold, its extra-axis settings) and the
study's training settings, and every row its trial reports at step = the row's ``epoch`` (0 = before
training). Credentials are read by the trackers themselves from the environment (MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_USERNAME / _PASSWORD, WANDB_API_KEY): no spec key holds one, so none reaches spec.yaml,
the manifest or the report. TensorBoard needs nothing here: Tune writes its event files into every
trial folder by default.

The callback classes are built on first use: importing mlflow takes seconds, and preflight imports this
module for its checks on every study.
"""

from __future__ import annotations

import importlib.util
import os
import time
from numbers import Number
from pathlib import Path
from typing import Any

from ferbench.harness.spec import StudySpec
from ferbench.harness.study.layout import TRIAL_FAILED
from ferbench.harness.study.storage import is_remote
from ferbench.harness.variants import parse_combination

# What MLflow imports for a database tracking URI (each tracker also needs its own package, named as the tracker).
MLFLOW_SQL_PACKAGES = ("sqlalchemy", "alembic")
MLFLOW_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
ARM_PARAMS = ("arm_id", "backbone", "init", "variant", "seed", "fold", "weights_source")
# Tune's own bookkeeping in every result row, beside what the trial reported (ray.tune.result).
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp", "date", "pid",
    "hostname", "node_ip", "config", "checkpoint_dir_name", "iterations_since_restore", "timesteps_since_restore",
    "timesteps_total", "episodes_total", "done", "should_checkpoint", "trial_id", "experiment_tag",
})


class TrackerUnavailable(RuntimeError):
    """A tracker in ``run.loggers`` cannot start here; ``str()`` says what to install or set."""


def mlflow_tracking_uri(spec: StudySpec) -> str | None:
    """Where MLflow runs go: ``run.mlflow.tracking_uri``, else MLFLOW_TRACKING_URI, else a SQLite store beside the
    experiments of a local ``run.storage`` (MLflow's own recommended local store). ``None``: results in a bucket
    and no tracking server named."""
    uri = spec.run.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri or is_remote(spec.run.storage):
        return uri or None
    return f"sqlite:///{Path(spec.run.storage).expanduser().resolve() / 'mlflow.db'}"


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def tracker_problems(spec: StudySpec) -> list[str]:
    """One line per tracker that would fail to start, found in milliseconds (no import, no network): preflight
    reports them before Ray starts."""
    problems = []
    for name in spec.run.loggers:
        if _missing((name,)):
            problems.append(f"run.loggers: {name} needs the {name} package: pip install 'ferbench[{name}]'")
            continue
        if name == "mlflow":
            problems += _mlflow_store_problems(spec)
    return problems


def _mlflow_store_problems(spec: StudySpec) -> list[str]:
    uri = mlflow_tracking_uri(spec)
    if uri is None:
        return ["run.mlflow.tracking_uri: results in a bucket need a tracking server every run can reach: set "
                "MLFLOW_TRACKING_URI or --set run.mlflow.tracking_uri=https://HOST (or a local sqlite:///PATH/mlflow.db)"]
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme in MLFLOW_SQL_SCHEMES and (missing := _missing(MLFLOW_SQL_PACKAGES)):
        return [f"run.loggers: mlflow with the tracking URI {scheme}://… needs {' and '.join(missing)}: "
                "pip install 'ferbench[mlflow]'"]
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        return [f"run.mlflow.tracking_uri: MLflow refuses its file store ({uri}) unless MLFLOW_ALLOW_FILE_STORE=true "
                "is set; use a sqlite:///PATH/mlflow.db URI (the default), or set MLFLOW_ALLOW_FILE_STORE=true"]
    return []


def run_params(spec: StudySpec, arm: dict) -> dict[str, Any]:
    """An arm's run parameters: its grid cell, then the training settings it trains with (the study's ``train``,
    data, split and resources settings, its variants' sections, and its extra-axis values over them), under their
    dotted spec paths (``train.lr``)."""
    params: dict[str, Any] = {key: arm[key] for key in ARM_PARAMS if arm.get(key) not in (None, "")}
    params.update(study=spec.study, task=spec.task, **{"data.format": spec.data.format, "split.kind": spec.split.kind,
                                                       "split.seed": spec.split.seed})
    if spec.data.path:
        params["data.path"] = spec.data.path
    sections = ["train", "resources", *(info.settings_key for info in parse_combination(arm["variant"]) if info.settings_key)]
    for section in sections:
        params.update(_dotted(section, getattr(spec, section).model_dump(mode="json")))
    params.update(arm.get("settings") or {})  # extra grid axes: dotted paths, as above
    return params


def _dotted(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {key: inner for name, item in value.items() for key, inner in _dotted(f"{prefix}.{name}", item).items()}
    return {prefix: value if isinstance(value, (str, int, float, bool)) or value is None else str(value)}


def epoch_metrics(result: dict) -> dict[str, float]:
    """The numbers a trial reported in one row, without Tune's bookkeeping or markers (booleans, strings)."""
    return {key: float(value) for key, value in result.items()
            if key not in TUNE_KEYS and isinstance(value, Number) and not isinstance(value, bool)}


def tracking_callbacks(spec: StudySpec, experiment_dir: Path) -> list:
    """The Tune callbacks of ``run.loggers``, in its order; ``TrackerUnavailable`` naming the fix when one cannot start."""
    problems = tracker_problems(spec)
    if problems:
        raise TrackerUnavailable("\n".join(problems))
    builders = {"mlflow": _mlflow_callback, "wandb": _wandb_callback}
    return [builders[name](spec, Path(experiment_dir)) for name in spec.run.loggers]


def _arm_id(trial) -> str:
    return trial.config["arm"]["arm_id"]


def _mlflow_callback(spec: StudySpec, experiment_dir: Path):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    experiment_name = experiment_dir.name

    class ArmRunsMLflowCallback(MLflowLoggerCallback):
        """Tune's MLflow callback, one run per arm: named by the arm id and tagged with the experiment, so a
        ``--resume`` continues the arm's run; each row logged in one batch at step = its epoch."""

        def setup(self, *args, **kwargs) -> None:
            super().setup(*args, **kwargs)
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self._failed: set = set()

        def log_trial_start(self, trial) -> None:
            if trial in self._trial_runs:  # a retry of the trial: its run goes on
                return
            arm = _arm_id(trial)
            experiment_id = self.mlflow_util.experiment_id
            query = f"tags.`ferbench.experiment` = '{experiment_name}' and tags.`ferbench.arm` = '{arm}'"
            earlier = [] if "'" in experiment_name else self.client.search_runs([experiment_id], query, max_results=1)
            if earlier:  # --resume: the arm's run continues
                run_id = earlier[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                tags = {**self.tags, "ferbench.experiment": experiment_name, "ferbench.arm": arm, "trial_name": str(trial)}
                run_id = self.client.create_run(experiment_id, run_name=arm, tags=tags).info.run_id
                params = [Param(key, str(value)) for key, value in run_params(spec, trial.config["arm"]).items()]
                for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
                    self.client.log_batch(run_id, params=params[start:start + 100])
            self._trial_runs[trial] = run_id

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            if trial not in self._trial_runs:
                self.log_trial_start(trial)
            run_id, metrics = self._trial_runs[trial], epoch_metrics(result)
            step, stamp = int(metrics.get("epoch", iteration)), int((result.get("timestamp") or time.time()) * 1000)
            self.client.log_batch(run_id, metrics=[Metric(key, value, stamp, step) for key, value in metrics.items()])
            if result.get(TRIAL_FAILED):  # stopped for good (a NaN loss): the run says so, not just the report
                self._failed.add(trial)
                self.client.log_batch(run_id, tags=[RunTag("ferbench.failed", str(result[TRIAL_FAILED])[:5000])])

        def log_trial_end(self, trial, failed: bool = False) -> None:
            super().log_trial_end(trial, failed=failed or trial in self._failed)

    return ArmRunsMLflowCallback(tracking_uri=mlflow_tracking_uri(spec), experiment_name=spec.run.mlflow.experiment or spec.study)


def _wandb_callback(spec: StudySpec, experiment_dir: Path):
    import ray
    from ray.air.constants import TRAINING_ITERATION
    from ray.air.integrations.wandb import WANDB_ENV_VAR, WandbLoggerCallback, _WandbLoggingActor
    from ray.air.util.node import _force_on_current_node

    class FlushingLoggingActor(_WandbLoggingActor):
        """Tune's W&B logging actor, returning only once W&B's service process has written the run out.
        ``wandb.finish()`` can return before that process has flushed an offline run's file, and Ray kills an
        actor's child processes with it: a run cut there kept nothing but the file's 7-byte header."""

        def run(self) -> None:
            super().run()
            self._wandb.teardown()

    class ArmRunsWandbCallback(WandbLoggerCallback):
        """Tune's W&B callback, one run per arm named by the arm id, with the arm's parameters as its config and
        each row at step = its epoch (W&B keeps the first row of a step that a retry replays). The step rides in
        Tune's ``training_iteration`` key, which W&B's logging actor reads it from."""

        _logger_actor_cls = FlushingLoggingActor

        def setup(self, *args, **kwargs) -> None:
            if self.kwargs.get("mode") not in ("offline", "disabled"):  # an offline run needs no API key
                super().setup(*args, **kwargs)

        def _start_logging_actor(self, trial, exclude_results: list, **init_kwargs) -> None:
            if self._remote_logger_class is None:  # as Tune's, but never restarted: Ray 2.60 cannot restart an actor
                # whose constructor takes a handle (the queue), and says so on the terminal for every trial.
                # The API key only where a run goes online (Ray writes a runtime env into its session logs).
                online = self.kwargs.get("mode") not in ("offline", "disabled")
                key = {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]} if online and WANDB_ENV_VAR in os.environ else {}
                self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node(), max_restarts=0,
                                                       runtime_env={"env_vars": key})(self._logger_actor_cls)
            init_kwargs.update(name=_arm_id(trial), config=run_params(spec, trial.config["arm"]))
            super()._start_logging_actor(trial, exclude_results, **init_kwargs)

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            metrics = epoch_metrics(result)
            super().log_trial_result(iteration, trial, {**metrics, TRAINING_ITERATION: int(metrics.get("epoch", iteration))})

    options = spec.run.wandb
    # Passed explicitly: W&B's logging actor runs in a Ray worker, whose environment is the Ray cluster's, not ours.
    # Its files go to the experiment folder (Tune's trial folder on the driver is a staging copy in Ray's temp dir).
    settings = {"mode": options.mode or os.environ.get("WANDB_MODE"), "entity": options.entity or os.environ.get("WANDB_ENTITY"),
                "dir": os.environ.get("WANDB_DIR") or str(experiment_dir)}
    return ArmRunsWandbCallback(project=options.project or spec.study, group=options.group or experiment_dir.name,
                                **{key: value for key, value in settings.items() if value})
