"""The study engine: preflight, experiment folder, one Ray Tune trial per grid arm, report.

Follows Ray Tune's plain-function model: ``run_trial`` wrapped with ``with_parameters``
(dataset in the object store once) and ``with_resources`` (per-trial CPU/GPU from the spec),
a FIFO scheduler (a benchmark runs every arm to its full budget), a checkpoint every epoch,
retries that resume from it. ``--resume`` starts a new Tuner over the arms not finished, each
continuing from its trial's newest intact checkpoint (``resume_plan``); Tune's pickled experiment
state is never read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ferbench.harness.study.checkpoints import is_final, newest_history, trial_folder, trial_statuses
from ferbench.harness.study.cross_dataset import describe_eval_sets, map_eval_sets, payload_sets
from ferbench.harness.study.diskspace import disk_full
from ferbench.harness.study.experiment import default_experiment_name, read_json, read_stored_spec, write_experiment_inputs
from ferbench.harness.study.layout import experiment_paths
from ferbench.harness.study.interrupts import install_sigterm_handler
from ferbench.harness.study.preflight import Preflight, PreflightError, run_preflight
from ferbench.harness.train.performance import TRIAL_WORKER_ENV
from ferbench.harness.spec import StudySpec
from ferbench.harness.tasks import get_task
from ferbench.harness.data.splits import load_splits
from ferbench.harness.study.storage import RemoteStorage, download, holds_experiment, is_remote, parse_remote, upload
from ferbench.harness.tree_spec import is_tree

log = logging.getLogger(__name__)

# Ray's periodic "snapshot" warnings are noise for a study that checkpoints every epoch.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class StudyOutcome:
    experiment_dir: Path
    report_dir: Path | None  # None: the report could not be written (see problems)
    statuses: dict[str, str]  # arm_id → completed | failed | unavailable | incomplete
    problems: list[str] = field(default_factory=list)  # one line each, e.g. "disk full at PATH"

    @property
    def finished(self) -> bool:
        return "incomplete" not in self.statuses.values()


def running_cluster_address() -> str | None:
    """The Ray cluster this process should join, or ``None`` to start a private local Ray.

    ``RAY_ADDRESS`` wins (``local`` asks for a private Ray). Without it, the cluster that ``ray start``
    runs on this machine: on the head of a ``ray up`` cluster, where ``ray submit`` runs
    ``python ~/run.py`` with no ``RAY_ADDRESS``, Ray records the address in
    ``<RAY_TMPDIR or /tmp>/ray/ray_current_cluster``. A record whose port nobody listens on is left
    from a cluster that has stopped, and ignored.
    """
    address = os.environ.get("RAY_ADDRESS", "")
    if address:
        return None if address == "local" else address
    recorded = _recorded_cluster_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return recorded
    except (OSError, ValueError):
        return None


def _recorded_cluster_address() -> str | None:
    """The address ``ray start`` records on its machine: ``<RAY_TMPDIR, else TMPDIR, else /tmp>/ray/ray_current_cluster``
    (Ray's documented temporary folder; read here rather than through Ray's private helpers)."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    record = Path(temp) / "ray" / "ray_current_cluster"
    try:
        return record.read_text().strip() or None
    except OSError:
        return None


def init_ray(num_cpus: int | None = None, verbose: bool = False, dashboard: bool = False) -> None:
    """Attach to the running cluster (``running_cluster_address``), otherwise start a local Ray with only
    what a study uses: no dashboard unless ``dashboard`` or ``verbose`` asks for it (and ray[default] is
    installed), no worker logs streamed to the driver unless ``verbose``."""
    import ray

    if ray.is_initialized():
        return
    options = {"runtime_env": {"env_vars": TRIAL_WORKER_ENV}}
    if not verbose:
        options.update(logging_level=logging.ERROR, log_to_driver=False)
    address = running_cluster_address()
    if address:  # a cluster's resources are its nodes' (and the autoscaler's), never ours to set
        ray.init(address=address, **options)
        return
    include_dashboard = (dashboard or verbose) and _dashboard_installed(asked=dashboard)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=include_dashboard, **options)


def _dashboard_installed(asked: bool) -> bool:
    """Whether Ray's dashboard can start (ray[default]); a study that asked for it says why it runs without."""
    if importlib.util.find_spec("aiohttp") is None:  # the dashboard's server; ray[tune] alone lacks it
        if asked:
            log.warning("run.dashboard: Ray's dashboard needs ray[default] (pip install 'ferbench[cluster]'); "
                        "running without it")
        return False
    return True


# Filesystems every node mounts under the same path: what a trial on a worker writes there, the
# driver on the head reads.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph",
    "beegfs", "gpfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.mount-s3", "fuse.sshfs",
})


def filesystem_type(path: Path) -> str:
    """Type of the filesystem holding ``path`` (or its nearest existing parent), from /proc/self/mounts."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    best, fstype = "", ""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:  # not Linux: nothing to go by
        return ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040: a space
        if (str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(best):
            best, fstype = mount_point, fields[2]
    return fstype


def check_results_storage(spec: StudySpec, experiment_dir: Path) -> None:
    """Refuse a results folder only the driver's machine has when trials may run on other machines.

    Each trial writes its checkpoints and results where it runs; on another machine that is not
    where the driver (on the head) looks, and the study's results are lost. Trials may run elsewhere
    when a node of the cluster is on another machine, or when no node on the driver's machine can
    host a trial (a head with ``CPU: 0``: the autoscaler will add workers). Object storage (``s3://…``) and
    shared filesystems pass; ``FERBENCH_SHARED_STORAGE=1`` (or a spec's ``run.shared_storage``)
    vouches for a shared mount that is not recognised.
    """
    import ray

    if is_remote(spec.run.storage) or spec.run.shared_storage:
        return
    if os.environ.get("FERBENCH_SHARED_STORAGE", "").lower() in ("1", "true", "yes"):
        return
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    here = next((n for n in nodes if n["NodeID"] == ray.get_runtime_context().get_node_id()), {})
    on_this_machine = [n for n in nodes if n["NodeManagerAddress"] == here.get("NodeManagerAddress")]
    machines = {node["NodeManagerAddress"] for node in nodes} - {here.get("NodeManagerAddress")}
    hosts_trials = any(
        n["Resources"].get("CPU", 0) >= spec.resources.cpu and n["Resources"].get("GPU", 0) >= spec.resources.gpu
        for n in on_this_machine
    )
    if (not machines and hosts_trials) or filesystem_type(experiment_dir) in SHARED_FILESYSTEMS:
        return
    where = f"nodes on {len(machines)} other machine(s)" if machines else "a head node that runs no trials"
    raise PreflightError(
        f"run.storage: {experiment_dir.parent} is on this machine only, but the cluster has {where}, whose trials "
        "would write their results to their own disks; use --storage s3://BUCKET/PREFIX, or a folder on a "
        "filesystem every node mounts (NFS, EFS, Lustre; if yours is not recognised as one, set FERBENCH_SHARED_STORAGE=1)"
    )


def _trial_dirname(trial) -> str:
    return f"{trial.config['arm']['arm_id']}_{trial.trial_id}"


def _build_trainable(spec: StudySpec, preflight: Preflight, name: str, ship_weights: bool):
    from ray import tune

    from ferbench.harness.train.trial import StudyPayload, fault_injection_from_env, run_trial
    from ferbench.harness.train.tree_trial import run_tree_trial

    images, labels, target_names, splits = preflight.training_arrays(get_task(spec.task, spec))
    payload = StudyPayload(
        spec=spec.model_dump(mode="json"),
        images=images,
        labels=labels,
        class_names=target_names,
        splits=splits,
        weight_files=preflight.weight_files,
        fault_injection=fault_injection_from_env(),
        weight_blobs={b: Path(p).read_bytes() for b, p in preflight.weight_files.items()} if ship_weights else {},
        eval_sets=payload_sets(preflight.eval_sets),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(_named_trainable(run_trial, run_tree_trial, name), payload=payload), resources)


def _named_trainable(run_trial, run_tree_trial, experiment_name: str):
    """``run_trial`` (``run_tree_trial`` for a ``tree:<name>`` arm) under a name of its own. Tune stores a trainable
    in the cluster's registry by its name, and a retried trial fetches it again from there: two studies sharing one
    cluster under the same name would run each other's payload after a retry."""

    def trainable(config: dict, payload) -> None:
        if is_tree(config["arm"]["backbone"]):
            return run_tree_trial(config, payload)
        return run_trial(config, payload)

    trainable.__name__ = trainable.__qualname__ = f"ferbench_{re.sub(r'[^A-Za-z0-9_]', '_', experiment_name)}"
    return trainable


def remote_storage(spec: StudySpec) -> RemoteStorage | None:
    """The object storage of ``run.storage`` (``s3://…``), or ``None`` for a folder."""
    return parse_remote(spec.run.storage, spec.run.s3_endpoint) if is_remote(spec.run.storage) else None


def _bucket_holds(remote: RemoteStorage, name: str) -> bool:
    """Whether the bucket already has this experiment; an unreachable bucket stops the study here."""
    try:
        return holds_experiment(remote, name)
    except OSError as err:
        raise PreflightError(f"run.storage: cannot reach {remote.uri}: {str(err).splitlines()[0]}; check the AWS "
                             "credentials and, for a non-AWS server, run.s3_endpoint") from None


def _tune_location(experiment_dir: Path, remote: RemoteStorage | None) -> dict:
    """Where Tune keeps the trials: beside FERBench's files, or in the bucket (all nodes reach it)."""
    if remote is None:
        return {"storage_path": str(experiment_dir.parent)}
    return {"storage_path": remote.tune_path, "storage_filesystem": remote.filesystem()}


def _run_config(spec: StudySpec, experiment_dir: Path, callbacks: list, verbose: bool, remote: RemoteStorage | None):
    from ray import tune

    return tune.RunConfig(
        name=experiment_dir.name,
        **_tune_location(experiment_dir, remote),
        failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.run.keep_checkpoints),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=callbacks,
        verbose=2 if verbose else 0,
    )


@dataclass
class StudyRun:
    """A study between its phases: what each phase of ``run_study`` hands to the next."""

    spec: StudySpec
    experiment_dir: Path
    resume: bool
    remote: RemoteStorage | None
    cluster_address: str | None = None
    preflight: Preflight | None = None
    to_run: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve_experiment(spec: StudySpec, experiment_dir: Path | None, resume: bool) -> StudyRun:
    """Phase 1: the experiment folder (and, on resume, the spec stored in it). A new study refuses a
    folder or bucket prefix that already holds an experiment."""
    if resume:
        if experiment_dir is None or not experiment_paths(experiment_dir)["grid"].is_file():
            raise FileNotFoundError(f"nothing to resume at {experiment_dir}")
        spec = read_stored_spec(experiment_dir)
        remote = remote_storage(spec)
        if remote is None:  # where the experiment is now (it may have been moved to a roomier disk)
            spec.run.storage = str(Path(experiment_dir).resolve().parent)
    else:
        remote = remote_storage(spec)
        name = spec.run.name or default_experiment_name(spec)
        if remote is not None:  # FERBench's files and the report live in a local mirror of the bucket
            experiment_dir = experiment_dir or remote.mirror(name)
        else:
            experiment_dir = experiment_dir or Path(spec.run.storage).expanduser().resolve() / name
        if experiment_paths(experiment_dir)["grid"].exists() or (remote and _bucket_holds(remote, experiment_dir.name)):
            raise FileExistsError(
                f"{experiment_dir} already holds an experiment; use --resume to continue it or choose another --set run.name"
            )
    return StudyRun(spec, Path(experiment_dir).resolve(), resume, remote)


def preflight_study(run: StudyRun) -> None:
    """Phase 2: every check that can fail before anything is written (``run_preflight``), then the
    arms to train. On resume the study's own record is read back: the stored splits and grid, never
    recomputed, and only the arms not finished (``resume_plan``)."""
    run.cluster_address = running_cluster_address()
    if run.cluster_address:  # preflight leaves node resources to the cluster (its autoscaler may add GPU nodes)
        os.environ["RAY_ADDRESS"] = run.cluster_address
    run.preflight = run_preflight(run.spec)  # raises PreflightError before anything is written
    if run.resume:
        paths = experiment_paths(run.experiment_dir)
        run.preflight.splits = load_splits(paths["splits"])
        run.preflight.arms = read_json(paths["grid"])
        _remap_eval_sets(run)
    runnable = run.preflight.runnable_arms
    run.to_run = resume_plan(run.experiment_dir, runnable) if run.resume else runnable


def _remap_eval_sets(run: StudyRun) -> None:
    """On resume, the extra test sets' labels mapped again on the stored splits (the study's own, which the mass
    centres of its finished arms came from), never on splits preflight recomputed."""
    preflight = run.preflight
    problems = map_eval_sets(run.spec, preflight.dataset, preflight.splits, preflight.eval_sets)
    if problems:
        raise PreflightError("\n".join(problems))


def start_ray(run: StudyRun, verbose: bool = False) -> None:
    """Phase 3: join the cluster or start a local Ray (only when there is something to train), and
    check that every trial can write where the driver reads."""
    if not run.to_run:
        return
    init_ray(verbose=verbose, dashboard=run.spec.run.dashboard)
    install_sigterm_handler()  # after Ray's own
    check_results_storage(run.spec, run.experiment_dir)


def write_inputs(run: StudyRun, command: list[str]) -> None:
    """Phase 4: the experiment's inputs (spec, grid, splits, manifest) before the first trial, in the
    bucket too; a resumed study keeps the ones it has."""
    if not run.resume:
        write_experiment_inputs(run.experiment_dir, run.spec, run.preflight, command)
        if run.remote is not None:
            upload(run.remote, run.experiment_dir, run.experiment_dir.name, "ferbench")
    where = f"{run.remote.uri}/{run.experiment_dir.name} (mirrored in {run.experiment_dir})" if run.remote else run.experiment_dir
    runnable = run.preflight.runnable_arms
    _announce(run.spec, run.preflight, where, run.resume, len(runnable) - len(run.to_run))


def tune_arms(run: StudyRun, verbose: bool = False) -> None:
    """Phase 5: one Ray Tune trial per arm to train; a full disk ends it with a problem line."""
    if not run.to_run:
        return
    from ray import tune

    from ferbench.harness.study.progress import ProgressPrinter
    from ferbench.harness.study.tracking import tracking_callbacks

    runnable = run.preflight.runnable_arms
    progress = ProgressPrinter(len(runnable), run.spec.train.epochs, already_finished=len(runnable) - len(run.to_run))
    callbacks = [progress, *tracking_callbacks(run.spec, run.experiment_dir)]  # run.loggers: MLflow, W&B
    if not verbose:  # ProgressPrinter speaks instead of Ray's reporter and trial tracebacks
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter prints nothing at verbosity 0
        for name in ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.tune.execution.experiment_state"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    tuner = tune.Tuner(
        _build_trainable(run.spec, run.preflight, run.experiment_dir.name, ship_weights=bool(run.cluster_address)),
        param_space={"arm": tune.grid_search(launch_order(run.to_run))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=run.spec.run.max_concurrent, trial_dirname_creator=_trial_dirname,
            reuse_actors=run.spec.run.reuse_workers,
        ),
        run_config=_run_config(run.spec, run.experiment_dir, callbacks, verbose, run.remote),
    )
    run.problems += _fit(tuner, run.experiment_dir if run.remote is None else None)


def launch_order(arms: list[dict]) -> list[dict]:
    """The arms in the order Tune starts them: those of a variant with rounds (teacher, then students: the
    longest trials) first, the rest in grid order. Started last, a long arm runs alone on one slot while
    the others idle; started first, it overlaps the short ones. Only the order changes, never an arm."""
    from ferbench.harness import variants

    def has_rounds(arm: dict) -> bool:
        return any(info.has_rounds for info in variants.parse_combination(arm["variant"]))

    return sorted(arms, key=lambda arm: not has_rounds(arm))


def report_study(run: StudyRun) -> StudyOutcome:
    """Phase 6: the report (``ferbench.reports.build_report``, the one entry point into reports),
    written even for a partial study; the arms' statuses from their sealed checkpoints."""
    from ferbench.reports import build_report

    if run.remote is not None:
        download(run.remote, run.experiment_dir.name, run.experiment_dir)
    try:
        report_dir = build_report(run.experiment_dir)
    except OSError as err:
        if not disk_full(run.experiment_dir, err):
            raise
        report_dir = None
        run.problems.append(f"report not written: disk full at {run.experiment_dir}")
    if run.remote is not None and report_dir is not None:
        upload(run.remote, run.experiment_dir, run.experiment_dir.name, "report")
    statuses = trial_statuses(run.experiment_dir, read_json(experiment_paths(run.experiment_dir)["grid"]))
    return StudyOutcome(run.experiment_dir, report_dir, statuses, run.problems)


def run_study(
    spec: StudySpec,
    *,
    experiment_dir: Path | None = None,
    resume: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
) -> StudyOutcome:
    """Run (or, with ``resume``, continue) a study and render its report, phase by phase: resolve the
    folder → preflight → start Ray → write the inputs → tune → report. Each phase is a function of
    its own (a benchmark can time any of them)."""
    run = resolve_experiment(spec, experiment_dir, resume)
    preflight_study(run)
    start_ray(run, verbose)
    write_inputs(run, command or sys.argv)
    tune_arms(run, verbose)
    return report_study(run)


def resume_plan(experiment_dir: Path, arms: list[dict]) -> list[dict]:
    """The arms ``--resume`` trains, each naming the trial folder it continues from (``resume_from``).

    Read from FERBench's own record (the grid and each trial's sealed checkpoints), never from Tune's
    experiment state: that state is pickled, and unpickling a file from the results folder would run
    whatever code someone with write access to it put there. An arm whose newest intact checkpoint ends
    its trial (finished, or stopped for good) is not trained again.
    """
    plan, arm_ids = [], [arm["arm_id"] for arm in read_json(experiment_paths(experiment_dir)["grid"])]
    for arm in arms:
        folder = trial_folder(experiment_dir, arm["arm_id"], arm_ids)
        if folder is None:
            plan.append(arm)
        elif not is_final(newest_history(folder)):
            plan.append({**arm, "resume_from": folder.name})
    return plan


def _fit(tuner, experiment_dir: Path | None) -> list[str]:
    """Run the trials. A full results disk ends the study with one line (the trials that could not
    write fail; Tune may then fail reading their cut error files): what is on disk stays intact,
    and ``--resume`` on a roomier disk continues from each trial's newest intact checkpoint."""
    try:
        tuner.fit()
    except Exception as err:  # noqa: BLE001 - re-raised unless the disk is full
        if experiment_dir is None or not disk_full(experiment_dir, err):
            raise
        return [f"disk full at {experiment_dir}"]
    return [f"disk full at {experiment_dir}"] if experiment_dir is not None and disk_full(experiment_dir) else []


def _describe_split(folds: dict, kind: str) -> str:
    if len(folds) == 1:
        split = next(iter(folds.values()))
        return f"{'/'.join(split)} {'/'.join(str(len(idx)) for idx in split.values())}"
    tests = [len(split["test"]) for split in folds.values()]
    exclusive = "subject-exclusive" if kind == "subject_kfold" else "stratified"
    return f"{len(folds)} {exclusive} folds, test parts of {min(tests)}–{max(tests)} images"


def _say(line: str) -> None:
    """A line of the study's plan: on stdout when the CLI shows notices (``ferbench.harness.cli.output``)."""
    log.info(line, extra={"stream": "stdout"})


def _announce(spec: StudySpec, preflight: Preflight, where: Path | str, resume: bool, done: int) -> None:
    dataset = preflight.dataset
    verb = "Resuming" if resume else "Study"
    finished = f" ({done} finished before)" if resume else ""
    _say(f"{verb} {spec.study!r}: {len(preflight.arms)} arms{finished}, {spec.train.epochs} epochs each → {where}")
    _say(
        f"  data: {dataset.name}, {len(dataset)} images {dataset.image_size[0]}×{dataset.image_size[1]}, "
        f"split {_describe_split(preflight.splits, spec.split.kind)}"
    )
    for line in describe_eval_sets(preflight.eval_sets):
        _say(line)
    if preflight.unlabeled_pool is not None:
        pool = preflight.unlabeled_pool
        _say(f"  unlabeled pool: {len(pool)} images from {pool.source} (labels unknown; resized {pool.notes['resized']}, "
              f"converted {pool.notes['converted']})")
    unavailable: dict[str, list[str]] = {}  # reason → arms: one line per missing weight file
    for arm in preflight.arms:
        if arm["status"] == "unavailable":
            unavailable.setdefault(arm["reason"], []).append(arm["arm_id"])
    for reason, arms in unavailable.items():
        _say(f"  unavailable: {', '.join(arms)}\n    {reason}")
