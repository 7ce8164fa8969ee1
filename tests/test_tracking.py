"""Experiment tracking (run.loggers): one MLflow / W&B run per arm with its parameters and every epoch's
metrics, read back from the trackers' own stores, offline: MLflow's local file store, W&B's offline runs.
Credentials come from the environment only and land in no file of the experiment."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMALL

from ferbench.harness.spec import SpecError, load_spec
from ferbench.harness.study.engine import run_study
from ferbench.harness.study.preflight import PreflightError, run_preflight
from ferbench.harness.study.tracking import epoch_metrics, mlflow_tracking_uri, run_params, tracker_problems

mlflow = pytest.importorskip("mlflow", reason="pip install 'ferbench[mlflow]'")
pytest.importorskip("wandb", reason="pip install 'ferbench[wandb]'")

EPOCHS = 2
ARMS = ("small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1")
# Stand-ins for real credentials: the study must run with them in its environment and write them nowhere.
SECRETS = {"WANDB_API_KEY": "wandb-test-key-3f9c1e77a0b24d6e", "MLFLOW_TRACKING_PASSWORD": "mlflow-test-password-8d2b",
           "MLFLOW_TRACKING_TOKEN": "mlflow-test-token-51ce0a"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny study (2 arms × 2 epochs) logging to MLflow (a local file store) and W&B (offline), run with fake
    credentials in the environment. Returns (outcome, mlflow tracking URI, epochs table of the report)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"file://{root / 'mlruns'}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**SECRETS, "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
            env.setenv(name, value)
        env.delenv("WANDB_DIR", raising=False)  # the default: the experiment folder
        spec = load_spec("quick", [*SMALL, f"train.epochs={EPOCHS}", f"run.storage={root / 'results'}", "run.name=tracked",
                                   "run.loggers=[mlflow,wandb]", f"run.mlflow.tracking_uri={uri}", "run.wandb.mode=offline"])
        outcome = run_study(spec)
    assert set(outcome.statuses.values()) == {"completed"}, outcome.statuses
    return outcome, uri, pd.read_csv(outcome.report_dir / "tables" / "epochs.csv")


@pytest.mark.e2e  # a whole study with both trackers
def test_mlflow_has_one_run_per_arm_with_its_parameters_and_every_epoch(tracked):
    outcome, uri, epochs = tracked
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("quick")  # default: the study's name
    found = client.search_runs([experiment.experiment_id])
    runs = {run.info.run_name: run for run in found}
    assert len(found) == len(ARMS) and sorted(runs) == list(ARMS)
    for arm, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["ferbench.experiment"] == "tracked" and run.data.tags["ferbench.arm"] == arm
        params = run.data.params
        assert {key: params[key] for key in ("arm_id", "backbone", "init", "variant", "seed")} == {
            "arm_id": arm, "backbone": "small_cnn", "init": "random", "variant": "baseline", "seed": arm[-1]}
        assert (params["train.epochs"], params["train.lr"], params["train.batch_size"]) == (str(EPOCHS), "0.0001", "32")
        rows = epochs[epochs.arm_id == arm].sort_values("epoch")
        for metric in ("train_acc", "train_loss", "val_acc", "val_loss", "lr", "epoch_time_s"):
            history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(EPOCHS + 1)), (arm, metric)  # epoch 0 = before training
            assert [m.value for m in history] == pytest.approx(rows[metric].tolist(), rel=1e-6), (arm, metric)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_images_per_s")] == [0, 1, 2]
        assert "test_acc" in run.data.metrics and "training_iteration" not in run.data.metrics  # Tune's bookkeeping stays out


def _wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB-log blocks of 32 KiB whose
    chunks (7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last) hold protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items) -> dict:
    """W&B's key → value items (a record's history row or config), whichever of key / nested_key a writer used."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.e2e  # a whole study with both trackers
def test_wandb_offline_has_one_run_per_arm_with_its_parameters_and_every_epoch(tracked):
    outcome, _, epochs = tracked
    runs = {}
    for path in (outcome.experiment_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        records = _wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
        assert any(r.WhichOneof("record_type") == "exit" for r in records), path  # the run was finished, not cut off
        runs.setdefault(run.display_name, []).append((run, history))
    assert sorted(runs) == list(ARMS) and all(len(found) == 1 for found in runs.values())
    runs = {arm: found[0] for arm, found in runs.items()}
    for arm, (run, history) in runs.items():
        assert (run.project, run.run_group) == ("quick", "tracked")  # defaults: the study, the experiment
        config = _items(run.config.update)
        assert (config["arm_id"], config["seed"], config["train.epochs"]) == (arm, int(arm[-1]), EPOCHS)
        rows = epochs[epochs.arm_id == arm].sort_values("epoch")
        assert [row["_step"] for row in history] == [row["epoch"] for row in history] == list(range(EPOCHS + 1))
        for metric in ("train_acc", "train_loss", "val_acc", "val_loss"):
            assert [row[metric] for row in history] == pytest.approx(rows[metric].tolist(), rel=1e-6), (arm, metric)


@pytest.mark.e2e  # a whole study with both trackers
def test_no_credential_from_the_environment_lands_in_any_file_of_the_experiment(tracked):
    outcome, uri, _ = tracked
    mlruns = Path(uri.removeprefix("file://"))
    files = [path for folder in (outcome.experiment_dir, mlruns) for path in folder.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"manifest.json", "spec.yaml", "report.md", "report.html", "tuner.pkl", "meta.yaml"} <= names
    assert any(name.endswith(".wandb") for name in names) and any(name.startswith("events.out.tfevents") for name in names)
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} written to {path}"


@pytest.mark.e2e  # W&B's service process starts and stops (about 14 s)
def test_the_wandb_logging_actor_returns_only_once_the_run_file_is_written(tmp_path):
    """Ray kills a logging actor's child processes with it as soon as its ``run`` returns; W&B's service process,
    one of them, may not have flushed the offline run by the end of ``wandb.finish()``. Run in this process, the
    actor must leave no such process behind and a run file holding the run, every row and its exit."""
    import queue

    import ray  # noqa: F401  (psutil comes with Ray, on its path once Ray is imported)
    import psutil
    import wandb
    from ray.air.integrations.wandb import _QueueItem

    from ferbench.harness.study.tracking import tracking_callbacks

    spec = load_spec("quick", ["run.loggers=[wandb]", "run.wandb.mode=offline", f"run.storage={tmp_path}"])
    actor_class = tracking_callbacks(spec, tmp_path)[0]._logger_actor_cls
    rows = queue.Queue()
    for step in range(3):
        rows.put((_QueueItem.RESULT, {"val_acc": 0.1 * step, "training_iteration": step}))
    rows.put((_QueueItem.END, None))
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    actor = actor_class(str(tmp_path), rows, [], [], mode="offline", dir=str(tmp_path), project="p", name="arm",
                        settings=wandb.Settings(console="off"))
    actor.run()
    assert {child.pid for child in psutil.Process().children(recursive=True)} - before == set()  # W&B's service exited
    records = _wandb_records(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    kinds = [record.WhichOneof("record_type") for record in records]
    assert "run" in kinds and "exit" in kinds and kinds.count("history") == 3


# --------------------------------------------------------------------------- settings and preflight (no study)


def test_loggers_are_off_by_default_and_only_known_trackers_are_accepted():
    assert load_spec("quick").run.loggers == []
    with pytest.raises(SpecError, match=r"run\.loggers\.0: Input should be 'mlflow' or 'wandb' \(got 'neptune'\)"):
        load_spec("quick", ["run.loggers=[neptune]"])


def test_the_spec_holds_no_credentials():
    with pytest.raises(SpecError, match="run.wandb.api_key: unknown key"):
        load_spec("quick", ["run.wandb.api_key=abc"])
    with pytest.raises(SpecError) as refused:
        load_spec("quick", ["run.mlflow.tracking_uri=https://ana:s3cr3t@mlflow.example.org"])
    assert "MLFLOW_TRACKING_PASSWORD" in str(refused.value) and "s3cr3t" not in str(refused.value)
    assert load_spec("quick", ["run.mlflow.tracking_uri=https://ana@mlflow.example.org"]).run.mlflow.tracking_uri


def test_mlflow_defaults_to_a_sqlite_store_beside_the_experiments(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(load_spec("quick", [f"run.storage={tmp_path}"])) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_tracking_uri(load_spec("quick", [f"run.storage={tmp_path}"])) == "http://127.0.0.1:5000"
    assert mlflow_tracking_uri(load_spec("quick", ["run.mlflow.tracking_uri=sqlite:///x.db"])) == "sqlite:///x.db"


def test_mlflow_store_problems_are_named_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    file_store = load_spec("quick", ["run.loggers=[mlflow]", f"run.mlflow.tracking_uri=file://{tmp_path}/mlruns"])
    assert tracker_problems(file_store) == [
        f"run.mlflow.tracking_uri: MLflow refuses its file store (file://{tmp_path}/mlruns) unless MLFLOW_ALLOW_FILE_STORE"
        "=true is set; use a sqlite:///PATH/mlflow.db URI (the default), or set MLFLOW_ALLOW_FILE_STORE=true"]
    bucket = load_spec("quick", ["run.loggers=[mlflow]", "run.storage=s3://bucket/prefix"])
    assert tracker_problems(bucket)[0].startswith("run.mlflow.tracking_uri: results in a bucket need a tracking server")
    assert tracker_problems(load_spec("quick", ["run.loggers=[mlflow,wandb]", f"run.storage={tmp_path}"])) == []


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_missing_tracker_package_stops_the_study_in_preflight_with_the_install_command(tracker, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # what an absent package looks like to the import system
    spec = load_spec("quick", [*SMALL, f"run.storage={tmp_path}", f"run.loggers=[{tracker}]"])
    with pytest.raises(PreflightError) as stopped:
        run_preflight(spec)
    assert str(stopped.value) == f"run.loggers: {tracker} needs the {tracker} package: pip install 'ferbench[{tracker}]'"
    assert list(tmp_path.iterdir()) == []  # before anything was written


def test_run_parameters_are_the_arms_cell_and_the_settings_it_trains_with():
    spec = load_spec("quick", ["grid.variant=[baseline,pseudo_label]", "split.unlabeled_fraction=0.1"])
    baseline, pseudo = (next(a for a in spec.arms() if a["variant"] == v) for v in ("baseline", "pseudo_label"))
    params = run_params(spec, baseline)
    assert params["arm_id"] == baseline["arm_id"] and params["train.lr"] == spec.train.lr
    assert params["train.freeze.policy"] == "none" and not any(key.startswith("pseudo_label.") for key in params)
    assert run_params(spec, pseudo)["pseudo_label.threshold"] == spec.pseudo_label.threshold
    # An extra grid axis (a dotted setting path) overrides the study's value for its arm.
    assert run_params(spec, {**baseline, "settings": {"train.lr": 0.02}})["train.lr"] == 0.02


def test_only_the_trials_own_numbers_are_logged():
    row = {"epoch": 3, "val_acc": 0.5, "trial_finished": True, "trial_failed": "loss became nan", "training_iteration": 4,
           "time_total_s": 9.0, "timestamp": 1, "config": {"arm": {}}, "done": False, "lr": 1e-4}
    assert epoch_metrics(row) == {"epoch": 3.0, "val_acc": 0.5, "lr": 1e-4}


def test_a_resumed_arm_continues_its_mlflow_run_and_an_arm_stopped_for_good_is_failed(tmp_path, monkeypatch):
    """The callback as Tune drives it, with Tune's own Trial objects: a first session ends after epoch 1 (the trial
    interrupted), ``--resume`` starts a new Trial of the same arm in the same experiment, which logs epoch 2 into the
    arm's run; an arm whose last row says it stopped for good (a NaN loss) is a FAILED run naming the reason."""
    from ray.tune.experiment import Trial

    from ferbench.harness.study.tracking import tracking_callbacks

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    spec = load_spec("quick", [*SMALL, "run.loggers=[mlflow]", f"run.mlflow.tracking_uri={uri}"])
    arm, other = spec.arms()

    def session(rows: dict[str, list[dict]]) -> None:
        callback, = tracking_callbacks(spec, tmp_path / "results" / "resumed")
        callback.setup()
        for arm_config, arm_rows in ((arm, rows.get(arm["arm_id"], [])), (other, rows.get(other["arm_id"], []))):
            if not arm_rows:
                continue
            trial = Trial("ferbench_resumed", config={"arm": arm_config}, stub=True)
            callback.log_trial_start(trial)
            for iteration, row in enumerate(arm_rows, start=1):
                callback.log_trial_result(iteration, trial, {**row, "training_iteration": iteration, "timestamp": 1e9})
            callback.log_trial_end(trial, failed=False)

    session({arm["arm_id"]: [{"epoch": 0, "val_acc": 0.1}, {"epoch": 1, "val_acc": 0.2}],
             other["arm_id"]: [{"epoch": 0, "val_acc": 0.1}, {"epoch": 1, "trial_failed": "loss became nan at epoch 1"}]})
    session({arm["arm_id"]: [{"epoch": 2, "val_acc": 0.3, "trial_finished": True}]})

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    runs = {run.info.run_name: run for run in found}
    assert len(found) == 2 and sorted(runs) == sorted([arm["arm_id"], other["arm_id"]])  # one run per arm, resumed too
    resumed, stopped = runs[arm["arm_id"]], runs[other["arm_id"]]
    history = sorted(client.get_metric_history(resumed.info.run_id, "val_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.2), (2, 0.3)] and resumed.info.status == "FINISHED"
    assert stopped.info.status == "FAILED" and stopped.data.tags["ferbench.failed"] == "loss became nan at epoch 1"
