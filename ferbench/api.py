"""The Python API: run a study and open an experiment folder from a notebook or a script.

``run`` does what ``ferbench run`` does, quietly; ``load`` opens an experiment folder (finished, partial
or interrupted, local or ``s3://…``). Both return an ``Experiment`` whose tables are computed by the
functions the report uses (``ferbench.reports``), so they are the numbers of ``report/tables/*.csv``,
also for an experiment whose report was never written.

Nothing heavy is imported here at module level: ``import ferbench`` stays cheap, and opening a local
experiment imports neither torch nor Ray.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ferbench.harness.spec import StudySpec
    from ferbench.harness.study.storage import RemoteStorage
    from ferbench.reports.spec_view import StoredSpec

__all__ = ["Experiment", "load", "override_args", "run"]
log = logging.getLogger(__name__)

STATUSES = ("completed", "failed", "unavailable", "incomplete")  # as trials.csv and ``ferbench run`` name them
EXAMPLE = "ferbench_results/quick-20261122-041500"


class Experiment:
    """One experiment folder, read the way its report reads it.

    The tables are computed on first use and kept; ``refresh()`` reads the folder again (a study still
    running has moved on). ``statuses`` come from the trials' sealed checkpoints, as ``--resume`` sees them.
    """

    def __init__(self, path: str | os.PathLike[str], *, remote: tuple[RemoteStorage, str] | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        self.path = Path(path).expanduser().resolve()
        _check_experiment(self.path)
        self.remote = remote  # (bucket storage, experiment name) when the folder mirrors s3://…
        self.problems = problems  # lines ``run`` could not get past (a full disk); the study can be resumed

    # ------------------------------------------------------------------ the study and its arms

    @cached_property
    def _stored_spec(self) -> StoredSpec:
        from ferbench.reports.collect import read_spec

        return read_spec(self.path)

    @property
    def spec(self) -> StudySpec:
        """The study spec the experiment ran with (``manifest.json``'s, as the report reads it)."""
        return self._stored_spec.spec

    @property
    def spec_notes(self) -> tuple[str, ...]:
        """What reading a spec written by an earlier version changed (empty for this version's)."""
        return self._stored_spec.notes

    @property
    def study(self) -> str:
        return self.spec.study

    @cached_property
    def _grid(self) -> list[dict]:
        from ferbench.reports.collect import read_grid

        return read_grid(self.path)

    @cached_property
    def statuses(self) -> dict[str, str]:
        """arm_id → completed | failed | unavailable | incomplete (not started or interrupted), every arm of the grid."""
        from ferbench.harness.study.checkpoints import trial_statuses

        return trial_statuses(self.path, self._grid)

    @property
    def finished(self) -> bool:
        """Whether no arm is left to train (``run(..., resume=True)`` would train none)."""
        return "incomplete" not in self.statuses.values()

    @cached_property
    def arms(self) -> pd.DataFrame:
        """One row per arm of the grid: its axes, status and trial folder (None when it has none yet)."""
        import pandas as pd

        axes = ["arm_id", "backbone", "init", "variant", "seed"] + (["fold"] if any("fold" in a for a in self._grid) else [])
        rows = [{**{key: arm.get(key) for key in axes}, "status": self.statuses[arm["arm_id"]],
                 "trial_dir": self.arm_path(arm["arm_id"])} for arm in self._grid]
        return pd.DataFrame(rows, columns=[*axes, "status", "trial_dir"])

    def arm_path(self, arm_id: str) -> Path | None:
        """The arm's trial folder (after ``--resume``, the one that got furthest), or None when it has
        none: unavailable, or not started."""
        from ferbench.harness.study.checkpoints import trial_folder

        arm_ids = [arm["arm_id"] for arm in self._grid]
        if arm_id not in arm_ids:
            raise KeyError(f"{arm_id!r} is not an arm of {self.path}; its arms: {', '.join(arm_ids)}")
        if self.statuses[arm_id] == "unavailable":
            return None
        return trial_folder(self.path, arm_id, arm_ids)

    # ------------------------------------------------------------------ the report's tables

    @cached_property
    def _tables(self) -> dict[str, pd.DataFrame]:
        return report_tables(self.path)

    @property
    def epochs(self) -> pd.DataFrame:
        """One row per trial × epoch (``tables/epochs.csv``)."""
        return self._tables["epochs"]

    @property
    def trials(self) -> pd.DataFrame:
        """One row per arm: status, error, parameters, final and test metrics, costs (``tables/trials.csv``)."""
        return self._tables["trials"]

    @property
    def mcr_mofr(self) -> pd.DataFrame:
        """Smelyakov's convergence and overfitting rates per arm, metric and epoch window (``tables/mcr_mofr.csv``)."""
        return self._tables["mcr_mofr"]

    @property
    def summary(self) -> pd.DataFrame:
        """Per model and metric across seeds: n, mean, std, 95% interval (``tables/summary.csv``)."""
        return self._tables["summary"]

    @property
    def differences(self) -> pd.DataFrame:
        """Paired pretrained − random and variant − baseline differences (``tables/differences.csv``)."""
        return self._tables["differences"]

    @cached_property
    def per_class(self) -> pd.DataFrame:
        """Test precision, recall, F1 and support per arm and class (``tables/per_class.csv``)."""
        from ferbench.reports.collect import collect_per_class

        return collect_per_class(self.path)[0]

    @cached_property
    def cross_dataset(self) -> pd.DataFrame:
        """Per arm and extra test set (``eval.datasets``): images scored and dropped, accuracy, macro F1 and F1 per
        class (``tables/cross_dataset.csv``; empty without extra test sets)."""
        from ferbench.reports.cross_dataset import collect_cross_dataset

        return collect_cross_dataset(self.path)

    # ------------------------------------------------------------------ actions

    def refresh(self) -> Experiment:
        """Forget what was read, so the next look reads the folder again; returns the experiment."""
        for name in ("_stored_spec", "_grid", "statuses", "arms", "_tables", "per_class", "cross_dataset"):
            self.__dict__.pop(name, None)
        return self

    def report(self) -> Path:
        """(Re)render ``report/`` from the folder (as ``ferbench report``; an ``s3://`` experiment's report
        is uploaded beside its trials) and return the report folder. The tables are read again after it."""
        from ferbench.reports import build_report

        folder = build_report(self.path)
        if self.remote is not None:
            from ferbench.harness.study.storage import upload

            storage, name = self.remote
            upload(storage, self.path, name, "report")
        self.refresh()
        return folder

    def __repr__(self) -> str:
        try:
            statuses, study = list(self.statuses.values()), self.study
        except (OSError, ValueError) as err:  # moved or damaged since: a notebook still shows the object
            return f"<Experiment at {self.path}: unreadable ({str(err).splitlines()[0]})>"
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses)
        where = f"{self.remote[0].uri}/{self.remote[1]} (mirrored in {self.path})" if self.remote else str(self.path)
        problems = f"; problems: {'; '.join(self.problems)}" if self.problems else ""
        return f"<Experiment {study!r} at {where}: {len(statuses)} arms, {counts}{problems}>"


def report_tables(experiment_dir: Path) -> dict[str, pd.DataFrame]:
    """epochs, trials, mcr_mofr, summary and differences, exactly as ``ferbench.reports.build_report``
    computes them before writing ``tables/``: the same function, the same settings from the stored spec."""
    from ferbench.reports import tidy_tables
    from ferbench.reports.collect import read_spec

    return tidy_tables(experiment_dir, read_spec(experiment_dir).spec)


def _check_experiment(path: Path) -> None:
    """One line naming the path and the fix when ``path`` is no experiment folder."""
    from ferbench.harness.study.layout import experiment_paths, is_experiment

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder; pass an experiment folder that a study wrote, e.g. {EXAMPLE}")
    if is_experiment(path):
        return
    marker = experiment_paths(path)["grid"].relative_to(path)
    inside = sorted(p.name for p in path.iterdir() if is_experiment(p)) if path.is_dir() else []
    around = next((parent for parent in path.parents if is_experiment(parent)), None)
    if inside:
        fix = f"it holds the experiments {', '.join(inside)}: pass one of them"
    elif around is not None:
        fix = f"it lies inside the experiment {around}: pass that folder"
    else:
        fix = f"pass an experiment folder that a study wrote, e.g. {EXAMPLE}"
    raise ValueError(f"{path} is not a FERBench experiment (no {marker}); {fix}")


def load(path: str | os.PathLike[str], s3_endpoint: str | None = None) -> Experiment:
    """Open an experiment folder, finished, partial or interrupted. ``s3://BUCKET/PREFIX/<experiment>``
    is downloaded into its local mirror first (model weights left out), as ``ferbench report`` does;
    ``s3_endpoint`` names a non-AWS server (default: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``)."""
    target = os.fspath(path)
    if "://" in target:  # a URI (the storage module's test; imported only here: it brings torch)
        from ferbench.harness.study.storage import fetch_experiment

        storage, name, mirror = fetch_experiment(target, s3_endpoint)
        return Experiment(mirror, remote=(storage, name))
    return Experiment(target)


def _yaml_text(key: str, value: Any) -> str:
    """``value`` as ``--set`` reads it: text as written, anything else as one line of YAML."""
    import yaml

    from ferbench.harness.spec import SpecError

    def plain(item: Any) -> Any:  # what safe YAML can write: tuples as lists, paths as text, numpy scalars as numbers
        if isinstance(item, (list, tuple, set, frozenset)):
            return [plain(i) for i in item]
        if isinstance(item, Mapping):
            return {plain(k): plain(v) for k, v in item.items()}
        if isinstance(item, os.PathLike):
            return os.fspath(item)
        if isinstance(item, numbers.Integral) and not isinstance(item, (int, bool)):
            return int(item)
        if isinstance(item, numbers.Real) and not isinstance(item, (int, float)):
            return float(item)
        return item

    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    try:
        text = yaml.safe_dump(plain(value), default_flow_style=True, width=float("inf"))
    except yaml.YAMLError:
        raise SpecError(f"{key}: {value!r} cannot be written as a setting; use numbers, text, booleans, None, "
                        "lists and mappings of them") from None
    return text.strip().removesuffix("...").strip()  # a scalar's document-end marker


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.epochs": 2, "grid.seed": [0, 1]}`` → ``["train.epochs=2", "grid.seed=[0, 1]"]``, the
    ``--set`` assignments of the CLI: a key is a dotted spec path, a value any YAML value (lists and
    mappings included); a string is taken as written, as ``--set`` takes it."""
    from ferbench.harness.spec import SpecError

    args = []
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise SpecError(f"overrides: {key!r} is not a setting; keys are dotted spec paths, e.g. 'train.epochs'")
        args.append(f"{key}={_yaml_text(key, value)}")
    return args


@contextlib.contextmanager
def _console(verbose: bool) -> Iterator[None]:
    """``verbose``: the lines ``ferbench run`` shows (the plan and progress on stdout, notices on stderr).
    Otherwise nothing: notices and progress lines stay log records."""
    if verbose:
        from ferbench.harness.cli.output import configure_output, restore_output

        configure_output()
        try:
            yield
        finally:
            restore_output()
        return
    yield


def _resume_folder(spec: StudySpec) -> Path:
    """The experiment ``resume=True`` continues, as ``ferbench run --resume`` finds it."""
    from ferbench.harness.study.experiment import resume_folder

    folder = resume_folder(spec)
    if folder is None:
        raise FileNotFoundError(f"resume: no experiment of study {spec.study!r}"
                                f"{f' named {spec.run.name!r}' if spec.run.name else ''} under {spec.run.storage}; "
                                "run it without resume=True first")
    return folder


def run(study: str | os.PathLike[str] = "quick", overrides: Mapping[str, Any] | None = None, *,
        storage: str | os.PathLike[str] | None = None, name: str | None = None, resume: bool = False,
        verbose: bool = False) -> Experiment:
    """Run a study (a built-in name or a YAML file) as ``ferbench run`` does and return its experiment.

    ``overrides`` are ``--set`` settings as a dict (``{"train.epochs": 2, "grid.seed": [0, 1]}``);
    ``storage`` is the results root (``run.storage``: a folder or ``s3://…``), ``name`` the experiment
    folder's name (``run.name``). ``resume`` continues the experiment ``name`` (else the study's newest)
    under ``storage`` with the spec stored in it (other overrides only find it): finished arms are not
    trained again. Quiet unless ``verbose``: then the lines ``ferbench run`` shows. Failed arms do not
    raise: ``Experiment.statuses`` says what happened to each arm; an interrupted study (Ctrl-C) returns
    with its unfinished arms ``incomplete``.

    Raises ``SpecError`` (a ``ValueError``) for a bad spec and ``PreflightError`` for a problem found
    before any trial (data, weights, storage), both with the message the CLI prints; ``FileExistsError``
    when the experiment folder already holds an experiment; ``FileNotFoundError`` when ``resume`` finds none.
    """
    from ferbench.harness.spec import load_spec

    args = override_args(overrides)
    args += [f"run.storage={os.fspath(storage)}"] if storage is not None else []
    args += [f"run.name={name}"] if name is not None else []
    spec = load_spec(os.fspath(study), args)
    with _console(verbose):
        experiment_dir = _resume_folder(spec) if resume else None
        from ferbench.harness.study.engine import run_study

        command = ["ferbench", "run", os.fspath(study), *(part for arg in args for part in ("--set", arg))]
        outcome = run_study(spec, experiment_dir=experiment_dir, resume=resume, command=command + (["--resume"] if resume else []))
    for problem in outcome.problems:
        log.warning("%s", problem)
    from ferbench.harness.study.storage import is_remote, parse_remote

    remote = (parse_remote(spec.run.storage, spec.run.s3_endpoint), outcome.experiment_dir.name) if is_remote(spec.run.storage) else None
    return Experiment(outcome.experiment_dir, remote=remote, problems=tuple(outcome.problems))
