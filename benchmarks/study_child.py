"""One benchmark study in a process of its own: ``python benchmarks/study_child.py REQUEST_JSON``.

Runs the quick study with the request's overrides through ``ferbench.harness.study.engine.run_study`` (the same
entry ``ferbench run`` uses), calling its phases one by one to time them (preflight, Ray start-up, tuning, report)
and, when asked, sampling the memory of this process and every process it started (Ray's daemons
and trial workers). Writes timings, every trial's epoch rows and the memory samples as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

SAMPLE_INTERVAL_S = 0.5


def anonymous_bytes(pid: int) -> int:
    """Anonymous memory of a process (heap, tensors, Python objects): what it alone allocated, without
    the shared libraries' code or shared-memory mappings such as Ray's object store."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def object_store_resident_bytes(pid: int) -> int:
    """Resident bytes of the process's shared-memory mappings (``/proc/PID/smaps``): Ray's object
    store lives in ``/dev/shm``, so these are the dataset pages a trial reads in place."""
    total, path = 0, ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
            path = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:" and path.startswith("/dev/shm"):
            total += int(head[1]) * 1024
    return total


def _title(proc) -> str:
    try:
        return " ".join(proc.cmdline())[:80]
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return ""


def _role(title: str) -> str:
    """trial (a worker running a trainable: Tune's ImplicitFunc actor) | ray_worker (idle, or Ray's
    own actors) | ray (daemons)."""
    if title.startswith("ray::ImplicitFunc"):
        return "trial"
    return "ray_worker" if title.startswith("ray::") else "ray"


class MemorySampler(threading.Thread):
    """Samples RSS, PSS, USS (psutil) and anonymous memory of this process tree."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.samples: list[dict] = []
        self.per_pid: dict[int, dict] = {}

    def run(self) -> None:
        import ray  # noqa: F401  (psutil comes with Ray, on its path once Ray is imported)
        import psutil

        me = psutil.Process()
        while not self.stop_event.is_set():
            sample = {"t": time.perf_counter(), "rss": 0, "pss": 0, "uss": 0, "anon": 0, "trials": 0}
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                title = _title(proc)
                role = "driver" if proc.pid == me.pid else _role(title)
                sample["rss"] += info.rss
                sample["pss"] += info.pss
                sample["uss"] += info.uss
                anon = anonymous_bytes(proc.pid)
                sample["anon"] += anon
                sample["trials"] += role == "trial"
                peak = self.per_pid.setdefault(proc.pid, {"role": role, "title": title, "rss": 0, "pss": 0, "uss": 0, "anon": 0})
                if role == "trial":  # an idle worker that became a trial's
                    peak.update(role="trial", title=title)
                for key in ("rss", "pss", "uss"):
                    peak[key] = max(peak[key], getattr(info, key))
                peak["anon"] = max(peak["anon"], anon)
                if role == "trial" and len(self.samples) % 4 == 0:  # smaps is slower to read
                    peak["shm_rss"] = max(peak.get("shm_rss", 0), object_store_resident_bytes(proc.pid))
            self.samples.append(sample)
            self.stop_event.wait(SAMPLE_INTERVAL_S)

    def summary(self) -> dict:
        return {
            "peak_rss": max((s["rss"] for s in self.samples), default=0),
            "peak_pss": max((s["pss"] for s in self.samples), default=0),
            "peak_uss": max((s["uss"] for s in self.samples), default=0),
            "peak_anon": max((s["anon"] for s in self.samples), default=0),
            "max_concurrent_trials": max((s["trials"] for s in self.samples), default=0),
            "per_process": list(self.per_pid.values()),
            "samples": len(self.samples),
        }


def main(request: dict) -> None:
    started = time.perf_counter()
    import ray.tune  # noqa: F401  (counted with the imports)
    from ferbench.harness.study import engine
    from ferbench.harness.study.checkpoints import trial_statuses
    from ferbench.harness.study.experiment import read_json
    from ferbench.harness.study.layout import experiment_paths
    from ferbench.harness.spec import load_spec
    from ferbench.reports.collect import read_epochs

    timings: dict = {"imports_s": time.perf_counter() - started}
    spec = load_spec("quick", request["overrides"])
    sampler = MemorySampler() if request.get("sample_memory") else None
    if sampler:
        sampler.start()
    study_start = time.perf_counter()
    # run_study's phases, one by one, each timed.
    run = engine.resolve_experiment(spec, None, resume=False)
    timings["preflight_s"] = _seconds(engine.preflight_study, run)
    # A private local Ray of the requested size (RAY_ADDRESS=local); start_ray then finds it started.
    timings["ray_start_s"] = _seconds(lambda: (engine.init_ray(num_cpus=request["ray_cpus"]), engine.start_ray(run)))
    engine.write_inputs(run, ["benchmark"])
    timings["fit_s"] = _seconds(engine.tune_arms, run)
    if request.get("render_report", True):
        timings["report_s"] = _seconds(engine.report_study, run)
    timings["study_s"] = time.perf_counter() - study_start
    statuses = trial_statuses(run.experiment_dir, read_json(experiment_paths(run.experiment_dir)["grid"]))
    if sampler:
        sampler.stop_event.set()
        sampler.join()
    epochs = []
    for trial_dir in sorted(p.parent for p in run.experiment_dir.glob("*/params.json")):
        frame = read_epochs(trial_dir)
        frame["trial_dir"] = trial_dir.name
        epochs += json.loads(frame.to_json(orient="records"))
    result = {"timings": timings, "epochs": epochs, "statuses": statuses,
              "memory": sampler.summary() if sampler else {}}
    Path(request["out"]).write_text(json.dumps(result))


def _seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
