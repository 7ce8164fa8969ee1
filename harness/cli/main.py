"""``ferbench`` command line: run studies, re-render reports, list backbones, manage pretrained
weights, inspect datasets.

Bad input ends with one message and exit code 2; nothing is written before the spec and the
preflight pass.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ferbench.harness.cli.backbones_cmd import add_backbones_parser, cmd_backbones
from ferbench.harness.cli.data_cmd import add_data_parser, cmd_data
from ferbench.harness.cli.export_cmd import add_export_parser, add_predict_parser, cmd_export, cmd_predict
from ferbench.harness.cli.output import configure_output, restore_output
from ferbench.harness.cli.spec_cmd import STUDIES_EPILOG, StudiesHelpFormatter, add_spec_parser, cmd_spec, override_hint
from ferbench.harness.study.interrupts import install_sigterm_handler, terminated
from ferbench.harness.cli.weights_cmd import add_weights_parser, cmd_weights

EXIT_OK, EXIT_FAILED_TRIALS, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _parser() -> argparse.ArgumentParser:
    from ferbench import __version__

    parser = argparse.ArgumentParser(prog="ferbench", description="Benchmark facial-emotion-recognition backbones on Ray Tune.")
    parser.add_argument("--version", action="version", version=f"ferbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a study (default: the built-in quick study)",
                              epilog=STUDIES_EPILOG, formatter_class=StudiesHelpFormatter)
    run.add_argument("study", nargs="?", default="quick", help="built-in study name or a YAML file (default: quick)")
    run.add_argument("--study", dest="study_option", metavar="STUDY", help="same as the positional STUDY")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec value, e.g. --set train.epochs=5 --set grid.seed=[0,1,2]")
    run.add_argument("--storage", help="results root directory (same as --set run.storage=DIR)")
    run.add_argument("--s3-endpoint", metavar="URL",
                     help="endpoint of an S3-compatible server for --storage s3://…: the same as --set run.s3_endpoint=URL "
                          "and as `ferbench report --s3-endpoint` (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, or AWS)")
    run.add_argument("--resume", action="store_true",
                     help="continue the newest experiment of this study under the storage (or --set run.name=NAME)")
    run.add_argument("--print-spec", action="store_true",
                     help="print the resolved spec as a commented study file and exit (= ferbench spec STUDY)")
    run.add_argument("--verbose", action="store_true", help="show Ray's own progress tables and logs")

    report = commands.add_parser("report", help="re-render the report of experiment folders, or compare them")
    report.add_argument("experiment_dirs", nargs="+", metavar="EXPERIMENT_DIR",
                        help="an experiment folder, or s3://BUCKET/PREFIX/<experiment>")
    report.add_argument("--s3-endpoint", metavar="URL",
                        help="endpoint of an S3-compatible server for s3:// folders: the same as `ferbench run "
                             "--s3-endpoint` and the spec key run.s3_endpoint (default: AWS_ENDPOINT_URL_S3 / "
                             "AWS_ENDPOINT_URL, or AWS)")
    report.add_argument("--compare", action="store_true",
                        help="also write one report setting the experiments side by side (the first is the reference)")
    report.add_argument("--out", help="folder of the comparison (default: beside the first experiment, "
                                                 "compare-<A>-vs-<B>…)")

    add_backbones_parser(commands)
    add_weights_parser(commands)
    add_data_parser(commands)
    add_export_parser(commands)
    add_predict_parser(commands)
    add_spec_parser(commands)
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ferbench: error: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    hint = override_hint(args.study)  # before the imports: a typo should cost no second
    if hint:
        return _fail(hint)
    from ferbench.harness.spec import SpecError, load_spec
    from ferbench.harness.spec_yaml import commented_spec_yaml

    study = args.study_option or args.study
    overrides = list(args.overrides) + ([f"run.storage={args.storage}"] if args.storage else []) + (
        [f"run.s3_endpoint={args.s3_endpoint}"] if args.s3_endpoint else [])
    try:
        spec = load_spec(study, overrides)
    except SpecError as err:
        return _fail(str(err).replace("\n", "\nferbench: error: "))
    if args.print_spec:
        print(commented_spec_yaml(spec), end="")
        return EXIT_OK

    from ferbench.harness.study.experiment import resume_folder  # only a run needs these
    from ferbench.harness.study.preflight import PreflightError
    from ferbench.harness.study.storage import is_remote

    remote = is_remote(spec.run.storage)
    storage = spec.run.storage if remote else Path(spec.run.storage).expanduser().resolve()
    experiment_dir = None
    if args.resume:
        try:
            experiment_dir = resume_folder(spec)
        except (ValueError, OSError) as err:
            return _fail(f"--resume: {err}")
        if experiment_dir is None:
            return _fail(f"--resume: no experiment of study {spec.study!r} under {storage}; run it without --resume first")

    from ferbench.harness.study.engine import run_study

    try:
        outcome = run_study(spec, experiment_dir=experiment_dir, resume=args.resume, verbose=args.verbose, command=sys.argv)
    except (PreflightError, FileExistsError, FileNotFoundError) as err:
        return _fail(str(err).replace("\n", "\nferbench: error: "))
    except OSError as err:  # a results or data path that cannot be written or read
        return _fail(describe_os_error(err), EXIT_FAILED_TRIALS)
    resume_hint = resume_command(study, storage, outcome.experiment_dir.name, spec.run.s3_endpoint)
    for problem in outcome.problems:
        print(f"ferbench: error: {problem}", file=sys.stderr)
    statuses = list(outcome.statuses.values())
    summary = ", ".join(f"{statuses.count(s)} {s}" for s in ("completed", "failed", "unavailable", "incomplete") if s in statuses)
    print(f"Done: {summary}.")
    if outcome.report_dir is not None:
        print(f"Report: {outcome.report_dir / 'report.md'}")
    if outcome.problems:
        print(f"Free space (or copy {outcome.experiment_dir} to a roomier disk), then continue with: {resume_hint}")
        return EXIT_FAILED_TRIALS
    if not outcome.finished:
        print(f"The study was interrupted. Continue it with: {resume_hint}")
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    return EXIT_FAILED_TRIALS if "failed" in statuses else EXIT_OK


def resume_command(study: str, storage: Path | str, name: str, s3_endpoint: str | None = None) -> str:
    """The exact command that continues this experiment: its storage (and S3 endpoint) and its name,
    never "the newest"."""
    endpoint = ["--s3-endpoint", shlex.quote(s3_endpoint)] if s3_endpoint else []
    return " ".join(["ferbench", "run", shlex.quote(study), "--resume", "--storage", shlex.quote(str(storage)),
                     *endpoint, "--set", shlex.quote(f"run.name={name}")])


def describe_os_error(err: OSError) -> str:
    """One line naming the path: "PATH: No space left on device"."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def _local_report_folder(target: str, endpoint: str | None) -> tuple[Path, tuple | None]:
    """A report target as a local folder; ``s3://…`` is downloaded to its mirror first."""
    from ferbench.harness.study.storage import fetch_experiment, is_remote

    if not is_remote(target):
        return Path(target).expanduser().resolve(), None
    storage, name, mirror = fetch_experiment(target, endpoint)
    return mirror, (storage, name)


def cmd_report(args: argparse.Namespace) -> int:
    from ferbench.reports import build_comparison_report, build_report

    from ferbench.harness.study.storage import upload

    if args.compare and len(args.experiment_dirs) < 2:
        return _fail("--compare needs two or more experiment folders, e.g. ferbench report A B --compare")
    if args.out and not args.compare:
        return _fail("--out names the comparison's folder; add --compare")
    folders = []
    try:
        for target in args.experiment_dirs:
            folder, remote = _local_report_folder(target, args.s3_endpoint)
            print(f"Report: {build_report(folder) / 'report.md'}")
            if remote is not None:  # the report goes back beside the trials in the bucket
                storage, name = remote
                upload(storage, folder, name, "report")
                print(f"  uploaded to {storage.uri}/{name}/report/")
            folders.append(folder)
        if args.compare:
            out = Path(args.out) if args.out else folders[0].parent / ("compare-" + "-vs-".join(f.name for f in folders))
            print(f"Comparison: {build_comparison_report(folders, out.resolve()) / 'report.md'}")
    except (FileNotFoundError, ValueError, OSError) as err:
        return _fail(str(err).splitlines()[0])
    return EXIT_OK


COMMANDS = {"run": cmd_run, "report": cmd_report, "backbones": cmd_backbones, "weights": cmd_weights, "data": cmd_data}
COMMANDS["spec"] = cmd_spec


def _recommended_arm(experiment_dir: Path) -> str:
    """``ferbench export`` without ARM: the report's recommended arm (the report layer, which only this module may import)."""
    from ferbench.reports import recommended_arm

    return recommended_arm(experiment_dir)


COMMANDS["export"] = lambda args: cmd_export(args, recommend=_recommended_arm)
COMMANDS["predict"] = cmd_predict


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # Hydra's habit, `ferbench run quick train.epochs=2`: say what to type instead
        hints = [override_hint(arg) for arg in extra] if args.command in ("run", "spec") else []
        hint = next(filter(None, hints), None)
        if hint:
            return _fail(hint)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    install_sigterm_handler()
    configure_output(verbose=getattr(args, "verbose", False))  # the library's notices, as plain lines
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\nferbench: interrupted", file=sys.stderr)
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    finally:
        restore_output()


def entry_point() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `ferbench backbones | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = EXIT_OK
    sys.exit(code)
