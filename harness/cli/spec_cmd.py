"""``ferbench spec [STUDY] [--set KEY=VALUE]`` and ``ferbench spec --schema``: a study file to start
from, or the JSON schema of study files for an editor.

``ferbench spec STUDY`` prints what ``ferbench run STUDY --print-spec`` prints (each key with its
meaning as a comment), without the run-only options. ``--schema`` gives YAML editors completion,
descriptions on hover and type checks: point a study file at it with a first line
``# yaml-language-server: $schema=ferbench-spec.schema.json``. Also here: what ``ferbench run
--help`` says about the built-in studies, and the hint for a Hydra-style ``KEY=VALUE`` argument.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STUDIES_EPILOG = "<built-in studies>"  # replaced when help is shown: listing them reads their files
_OVERRIDE = re.compile(r"[A-Za-z_][^=/\\\s]*=.*", re.DOTALL)


def add_spec_parser(subparsers: Any) -> argparse.ArgumentParser:
    spec = subparsers.add_parser(
        "spec", help="print a study as a commented study file, or the JSON schema of study files",
        description="Print STUDY resolved, each key with its meaning (the same as `ferbench run STUDY\n"
                    "--print-spec`), or with --schema the JSON schema of study files for YAML editors.",
        epilog=STUDIES_EPILOG, formatter_class=StudiesHelpFormatter)
    spec.add_argument("study", nargs="?", help="built-in study name or a YAML file (default: quick)")
    spec.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a spec value, e.g. --set train.epochs=5")
    spec.add_argument("--schema", action="store_true",
                      help="print the JSON schema of study files instead; a line "
                           "'# yaml-language-server: $schema=FILE' in a study file gives editors completion and checks")
    spec.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of printing")
    return spec


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ferbench: error: {message}", file=sys.stderr)
    return code


def override_hint(argument: str) -> str | None:
    """The message for a Hydra-style ``key=value`` argument where a study belongs, or None when
    ``argument`` does not look like one (or is an existing file, whatever its name)."""
    if not _OVERRIDE.fullmatch(argument) or Path(argument).expanduser().exists():
        return None
    return f"{argument!r} looks like an override; use --set {shlex.quote(argument)}"


def builtin_study_descriptions() -> dict[str, str]:
    """Built-in study name → the ``description:`` of its YAML file ('' when it has none)."""
    from importlib import resources

    import yaml

    from ferbench.harness.spec import BUILTIN_STUDY_PACKAGE, builtin_studies

    found = {}
    for name in builtin_studies():
        try:
            raw = yaml.safe_load(resources.files(BUILTIN_STUDY_PACKAGE).joinpath(f"{name}.yaml").read_text())
        except yaml.YAMLError:
            raw = None
        found[name] = str(raw.get("description") or "") if isinstance(raw, dict) else ""
    return found


def studies_epilog() -> str:
    descriptions = builtin_study_descriptions()
    width = max(map(len, descriptions), default=0)
    lines = [f"  {name:<{width}}  {text}".rstrip() for name, text in descriptions.items()]
    return "\n".join(["built-in studies (STUDY):", *lines, "", "A YAML file works as STUDY too; "
                      "`ferbench spec STUDY` prints one to start from."])


class StudiesHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Puts the built-in studies in the help text, reading their files only when help is shown."""

    def add_text(self, text: str | None) -> None:
        super().add_text(studies_epilog() if text == STUDIES_EPILOG else text)


def cmd_spec(args: argparse.Namespace) -> int:
    if args.schema and (args.overrides or args.study):
        return _error("--schema describes every study file; drop STUDY and --set")
    study = args.study or "quick"
    hint = override_hint(study)
    if hint:
        return _error(hint)
    from ferbench.harness.spec import SpecError, load_spec
    from ferbench.harness.spec_yaml import commented_spec_yaml, spec_json_schema

    if args.schema:
        text = json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"
    else:
        try:
            text = commented_spec_yaml(load_spec(study, args.overrides))
        except SpecError as err:
            return _error(str(err).replace("\n", "\nferbench: error: "))
    if args.out is None:
        print(text, end="")
        return EXIT_OK
    from ferbench.harness.study.atomic import atomic_write_text  # a full disk leaves the old file whole

    try:
        atomic_write_text(args.out.expanduser(), text)
    except OSError as err:
        return _error(f"{err.filename or args.out}: {err.strerror or err}", EXIT_FAILED)
    print(f"Wrote {args.out}")
    return EXIT_OK
