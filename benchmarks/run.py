"""FERBench benchmarks: ``python benchmarks/run.py [--quick] [--only SECTION ...] [--json PATH]``.

Sections: ``overhead`` (a trial against the bare PyTorch loop), ``data`` (CSV load, SynthFER,
input pipeline), ``study`` (study wall time against its trials' own time, N = 2, 8, 16) and
``memory`` (1 vs 4 concurrent trials on one FER2013-size dataset). Prints one table with every
target marked met or MISSED and writes everything measured as JSON (default
``benchmarks/results.json``). ``--quick`` runs tiny sizes in about three and a half minutes, to check the
benchmark itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/run.py` from anywhere
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from benchmarks.common import ALLOCATOR_ENV, pin_allocator  # noqa: E402

if __name__ == "__main__":
    pin_allocator()  # before torch is imported: the re-exec starts over

from benchmarks import common, data_path, memory, overhead, study_overhead  # noqa: E402
from benchmarks.common import Target, verdict  # noqa: E402

SECTIONS = ("overhead", "data", "study", "memory")


def _rows_overhead(results: list[dict]) -> list[tuple]:
    return [(f"harness/bare {r['backbone']} {r['size']}px", f"{r['ratio']:.3f}",
             f"median of {', '.join(f'{x:.3f}' for x in r['ratios'])}; {r['harness_images_per_s']:.1f} vs "
             f"{r['bare_images_per_s']:.1f} img/s; bare drift across a trial {', '.join(f'{d:+.1%}' for d in r['bare_drifts'])}",
             overhead.TARGET, r["ratio"]) for r in results]


def _rows_data(d: dict, model_steps: dict) -> list[tuple]:
    csv, synth = d["csv"], d["synthfer"]
    rows = [
        (f"CSV first load ({csv['rows']:,} rows, {csv['csv_mb']:.0f} MB)", f"{csv['first_load_s']:.2f} s", "parse + validate + write cache", None, None),
        ("CSV cached load / first load", f"{csv['cached_over_first']:.3f}", f"{csv['cached_load_s']:.3f} s, median of {len(csv['cached_loads_s'])} ({min(csv['cached_loads_s']):.3f}–{max(csv['cached_loads_s']):.3f} s)", data_path.CACHED_LOAD_TARGET, csv["cached_over_first"]),
        (f"SynthFER generation ({synth['images']:,} images)", f"{synth['seconds']:.2f} s", f"{synth['images_per_s']:.0f} img/s", None, None),
    ]
    for p in d["pipeline"]:
        step = model_steps.get(p["size"])
        note = f"no augmentation {p['no_augment_images_per_s']:.0f} img/s"
        if step:
            note += f"; {p['augment_images_per_s'] / step[1]:.0f}× the {step[0]} step ({step[1]:.1f} img/s)"
        rows.append((f"input pipeline 48px→{p['size']}px, {p['in_chans']} ch, augmented", f"{p['augment_images_per_s']:.0f} img/s", note, None, None))
    return rows


def _rows_study(study: dict) -> list[tuple]:
    rows = []
    for r in study["grids"]:
        target = study_overhead.TARGET if r["trials"] == 16 else None
        rows.append((f"study overhead N={r['trials']}{'' if r['reuse_workers'] else ' (reuse_workers off)'}", f"{r['overhead']:.1%}",
                     f"study {r['study_s']:.1f} s × {r['slots']} slots vs Σ trials {r['trial_own_s']:.1f} s "
                     f"({r['mean_trial_own_s']:.1f} s each); Ray start {r['ray_start_s']:.1f} s, report {r['report_s']:.1f} s", target, r["overhead"]))
    rows.append(("study overhead once / per trial", f"{study['fixed_slot_s']:.1f} / {study['per_trial_slot_s']:.2f} s",
                 f"slot-seconds; per trial {study['per_trial_share']:.1%} of its own time", None, None))
    rows.append((f"trial length meeting ≤ {study_overhead.TARGET.bound:.0%} at N={study['grids'][-1]['trials']}", f"{study['target_trial_s']:.1f} s",
                 f"of a trial's own time, from the two figures above; these trials: {study['grids'][-1]['mean_trial_own_s']:.1f} s", None, None))
    return rows


def _rows_memory(m: dict) -> list[tuple]:
    copy = m["dataset_mb"] - m["control_dataset_mb"]
    return [
        ("peak PSS, 1 trial / 4 trials", f"{m['one']['peak_pss_mb']:.0f} / {m['four']['peak_pss_mb']:.0f} MB",
         f"RSS {m['one']['peak_rss_mb']:.0f} / {m['four']['peak_rss_mb']:.0f} MB", None, None),
        ("memory per extra trial (PSS)", f"{m['per_extra_trial_pss_mb']:.0f} MB",
         f"a trial worker's own memory {m['trial_worker_anon_mb']:.0f} MB = imports {m['process_imports']['anon_mb']:.0f} "
         f"+ training step {m['training_step_peak_mb']:.0f} (model+Adam {m['model_and_optimizer_mb']:.0f}) "
         f"+ other {m['trial_worker_other_mb']:.0f} MB", None, None),
        (f"trial's own memory, {m['dataset_mb']:.0f} vs {m['control_dataset_mb']:.0f} MB dataset",
         f"{m['worker_anon_growth_with_dataset_mb']:+.0f} MB",
         f"a copy would add {copy:.0f} MB; object store pages resident in each worker {m['trial_worker_object_store_resident_mb']:.0f} MB",
         Target(round(0.5 * copy), at_least=False), m["worker_anon_growth_with_dataset_mb"]),
    ]


def print_table(rows: list[tuple]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>14}  {'target':>8}  {'':6}  detail")
    for name, value, detail, target, number in rows:
        print(f"{name:<{width}}  {value:>14}  {target.describe() if target else '':>8}  {verdict(number, target):6}  {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs, numbers mean nothing")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results.json"), help="where to write the results")
    parser.add_argument("--no-reuse-workers", action="store_true", help="run the study section with run.reuse_workers=false")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results: dict = {"machine": common.machine(), "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "allocator_env": ALLOCATOR_ENV}
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cpu_cores']} cores, "
          f"{results['machine']['memory_gib']} GiB, GPUs: {results['machine']['gpus'] or 'none'}", flush=True)
    rows: list[tuple] = []
    if "overhead" in args.only:
        results["overhead"] = overhead.run(args.quick)
        rows += _rows_overhead(results["overhead"])
    if "data" in args.only:
        results["data"] = data_path.run(args.quick)
        steps = {r["size"]: (f"{r['backbone']}", r["bare_images_per_s"]) for r in results.get("overhead", []) if r["backbone"] == "mobilenet_v1"}
        if results["data"]["mobilenet_v1_step_224_images_per_s"]:
            steps[224] = ("mobilenet_v1", results["data"]["mobilenet_v1_step_224_images_per_s"])
        rows += _rows_data(results["data"], steps)
    if "study" in args.only:
        results["study"] = study_overhead.run(args.quick, reuse_workers=not args.no_reuse_workers)
        rows += _rows_study(results["study"])
    if "memory" in args.only:
        results["memory"] = memory.run(args.quick)
        rows += _rows_memory(results["memory"])
    results["seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # ~2 alone on 2 cores; more: other work ran
    results["targets"] = [{"figure": r[0], "value": r[4], "target": r[3].describe(), "met": r[3].met(r[4])} for r in rows if r[3]]
    print_table(rows)
    missed = [t["figure"] for t in results["targets"] if not t["met"]]
    print(f"\n{len(results['targets']) - len(missed)} of {len(results['targets'])} targets met"
          f"{': missed ' + ', '.join(missed) if missed else ''}; {results['seconds']:.0f} s in all")
    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
