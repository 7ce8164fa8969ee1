"""A newcomer's first run: ``python harness/run.py`` with an empty cache, timed in wall and CPU seconds.

CPU time is the figure that carries to a slower laptop, and it must count every process the study
starts: the driver, Ray's daemons (GCS, raylet, agents) and the trial workers. Those are not all
children the driver waits for, so ``getrusage`` would miss them; the command runs in a cgroup of its
own instead (cgroup v2 ``cpu.stat`` or v1 ``cpuacct``; creating one needs root), and the cgroup's
counters hold every descendant's CPU time. Without a writable cgroup the script says so and stops.

    sudo python benchmarks/first_run.py [--python PYTHON] [--runs N] [-- EXTRA run.py ARGS]

``--python`` runs another checkout's interpreter (a virtual environment with that version installed),
so two versions are measured on the same machine, interleaved: ``--python A --python B --runs 2``
runs A, B, A, B.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _new_cgroup(name: str) -> tuple[Path, str]:
    """A fresh cgroup and its kind: 'v2' (unified) or 'v1' (cpuacct)."""
    if (CGROUP_ROOT / "cgroup.controllers").is_file():
        folder = CGROUP_ROOT / name
        folder.mkdir()
        return folder, "v2"
    folder = CGROUP_ROOT / "cpuacct" / name
    folder.mkdir()
    return folder, "v1"


def _cpu_seconds(folder: Path, kind: str) -> dict[str, float]:
    if kind == "v2":
        stat = dict(line.split() for line in (folder / "cpu.stat").read_text().splitlines())
        return {"user_s": int(stat["user_usec"]) / 1e6, "sys_s": int(stat["system_usec"]) / 1e6}
    ticks = os.sysconf("SC_CLK_TCK")
    stat = dict(line.split() for line in (folder / "cpuacct.stat").read_text().splitlines())
    return {"user_s": int(stat["user"]) / ticks, "sys_s": int(stat["system"]) / ticks}


def measure(python: str, extra: list[str], run_py: Path) -> dict:
    """One first run in a fresh cache and results folder; returns wall, user and system seconds."""
    name = f"ferbench-first-run-{os.getpid()}-{time.monotonic_ns()}"
    try:
        folder, kind = _new_cgroup(name)
    except OSError as err:
        sys.exit(f"first_run: cannot create a cgroup ({err}); run as root on Linux")
    work = Path(tempfile.mkdtemp(prefix="ferbench-first-run-"))
    env = {**os.environ, "FERBENCH_CACHE_DIR": str(work / "cache"), "RAY_AUTH_MODE": "disabled"}
    enter = f"echo $$ > {folder / 'cgroup.procs'} && exec \"$@\""
    start = time.monotonic()
    done = subprocess.run(["sh", "-c", enter, "sh", python, str(run_py), "--storage", str(work / "results"), *extra],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    time.sleep(3)  # Ray's daemons exit after the driver
    row = {"python": python, "returncode": done.returncode, "wall_s": wall, **_cpu_seconds(folder, kind)}
    row["cpu_s"] = row["user_s"] + row["sys_s"]
    for pid in (folder / "cgroup.procs").read_text().split():
        subprocess.run(["kill", pid], check=False)
    time.sleep(1)
    folder.rmdir()
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        row["stderr_tail"] = done.stderr[-2000:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="interpreter to run harness/run.py with (repeatable)")
    parser.add_argument("--runs", type=int, default=1, help="rounds; each runs every --python once")
    parser.add_argument("extra", nargs="*", help="arguments for run.py after --")
    args = parser.parse_args()
    pythons = args.python or [sys.executable]
    rows = []
    for _ in range(args.runs):
        for python in pythons:
            run_py = Path(subprocess.run([python, "-c", "import ferbench.harness, pathlib; "
                                          "print(pathlib.Path(ferbench.harness.__file__).parent / 'run.py')"],
                                         capture_output=True, text=True, check=True).stdout.strip())
            row = measure(python, args.extra, run_py)
            print(json.dumps(row), flush=True)
            rows.append(row)


if __name__ == "__main__":
    main()
