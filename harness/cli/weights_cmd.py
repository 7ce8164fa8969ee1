"""``ferbench weights list|fetch|verify|import-h5``: see, download, check and convert pretrained weights.

Why a command: studies resolve weights offline at preflight and stop when one is missing; this is
where a researcher sees what is missing and where it would go, downloads it on a machine with
internet, proves each file really loads into its backbone (and is the file whose SHA-256 was
recorded when it was downloaded), and converts deepface's Keras ``.h5`` files, without writing
Python. Heavy modules (torch, timm) are imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
H5_CHOICES = ("vggface", "openface")  # = ferbench.backbones.h5_import.H5_BACKBONES, without importing torch to build the parser
DIR_HELP = "weights folder (default: $FERBENCH_WEIGHTS_DIR, else ~/.cache/ferbench/weights)"


def add_weights_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``weights`` and its subcommands to ``ferbench``'s subparsers."""
    weights = subparsers.add_parser("weights", help="list, fetch, verify or import pretrained weights")
    actions = weights.add_subparsers(dest="weights_command", required=True, metavar="{list,fetch,verify,import-h5}")

    listing = actions.add_parser("list", help="which pretrained weights are present, where, and where they come from")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--dir", type=Path, help=DIR_HELP)

    fetch = actions.add_parser("fetch", help="download pretrained weights into the weights folder")
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="backbone names, e.g. vggface openface resnet50 timm:hf-hub:timm/resnet18.a1_in1k")
    fetch.add_argument("--dir", type=Path, help=DIR_HELP)
    fetch.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to connect or stall (default 30)")
    fetch.add_argument("--mirror", metavar="URL",
                       help="download URL/<file name> instead of the published sources (e.g. an internal server); "
                            "for timm:hf-hub: names a Hugging Face Hub endpoint, as HF_ENDPOINT")

    verify = actions.add_parser("verify", help="check every present weight file's SHA-256 and load it into its backbone")
    verify.add_argument("names", nargs="*", metavar="NAME", help="backbones to check (default: all with pretrained weights)")
    verify.add_argument("--dir", type=Path, help=DIR_HELP)
    verify.add_argument("--accept", action="store_true",
                        help="record the SHA-256 of a file you replaced on purpose (after it loads) instead of refusing it")

    import_h5 = actions.add_parser("import-h5", help="convert deepface's Keras .h5 weights to a PyTorch state_dict")
    import_h5.add_argument("file", type=Path, metavar="FILE", help="vgg_face_weights.h5 or openface_weights.h5")
    import_h5.add_argument("--backbone", required=True, choices=H5_CHOICES)
    import_h5.add_argument("--out", type=Path, help="output .pth (default: the published name in the weights folder)")
    return weights


def _error(message: str) -> int:
    print(f"ferbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _weights_dir(args: argparse.Namespace) -> Path:
    from ferbench.backbones.weights import default_weights_dir

    return (args.dir or default_weights_dir()).expanduser()


def _unknown_names(names: list[str]) -> str | None:
    """The message for the first name that is not a backbone with downloadable weights, if any."""
    from ferbench.backbones import get_backbone_info
    from ferbench.backbones.download import weight_source
    from ferbench.backbones.hf_hub import hub_repo_id

    for name in names:
        try:
            if hub_repo_id(name) is None:  # a Hub backbone's config may not be here yet: fetch brings it
                get_backbone_info(name)
        except KeyError as err:
            return str(err.args[0])
        if weight_source(name) is None:
            return f"{name} has no published pretrained weights"
    return None


def _pretrained_backbones() -> list[str]:
    from ferbench.backbones import list_backbones
    from ferbench.backbones.download import weight_source

    return [name for name in list_backbones() if weight_source(name) is not None]


def _size(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / 1e6:,.1f} MB"


def _list_rows(weights_dir: Path) -> list[dict[str, Any]]:
    from ferbench.backbones import resolve_pretrained
    from ferbench.backbones.download import weight_source

    rows = []
    for name in _pretrained_backbones():
        source = weight_source(name)
        status = resolve_pretrained(name, weights_dir=weights_dir)
        rows.append({
            "name": name, "file": str(weights_dir / source.filename), "available": status.available,
            "path": status.path, "source": status.source,
            "size_bytes": Path(status.path).stat().st_size if status.available else None,
            "url": source.urls[0], "mirrors": list(source.urls[1:]),
            **({"problem": status.message} if status.source == "sha256-mismatch" else {}),
        })
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    weights_dir = _weights_dir(args)
    rows = _list_rows(weights_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"Weights folder: {weights_dir}")
    for row in rows:
        if row["available"]:
            where = row["path"] + (f"  ({row['source']})" if row["source"].startswith("hf-cache:") else "")
            print(f"  {row['name']:<14}{'found':<9}{_size(row['size_bytes']):>11}  {where}")
        elif row.get("problem"):
            print(f"  {row['name']:<14}{'CHANGED':<9}{'':>11}  {row['path']}  (SHA-256 differs from its record: "
                  f"ferbench weights verify {row['name']})")
        else:
            print(f"  {row['name']:<14}{'missing':<9}{'':>11}  {row['file']}  <- {row['url']}")
    if not all(row["available"] for row in rows):
        print("Download missing ones with: ferbench weights fetch NAME ...  (offline: place the file at the path shown)")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from ferbench.backbones.download import DownloadError, fetch_weights, present_weights
    from ferbench.backbones.integrity import check_weight_file

    unknown = _unknown_names(args.names)
    if unknown:
        return _error(unknown)
    weights_dir = _weights_dir(args)
    for name in args.names:
        try:
            present = present_weights(name, weights_dir)
            if present:  # nothing is downloaded twice; what is here is checked against its record
                print(f"{name}: already present at {present[0]}  sha256={check_weight_file(present[0], name, present[1])}")
                continue
            path, sha256 = fetch_weights(name, weights_dir, timeout_s=args.timeout, mirror=args.mirror)
        except (DownloadError, ValueError, OSError) as err:  # ValueError: a hash mismatch; OSError: an unwritable folder
            return _error(f"{name}: {err}")
        print(f"{name}: {path}  sha256={sha256}")
    if args.dir:
        print(f"Studies look in this folder with --set weights.dir={weights_dir}")
    return EXIT_OK


def _verify_one(name: str, status: Any, accept: bool) -> tuple[str, str | None]:
    """(sha256, problem) of ``status``'s file: its SHA-256 against the publisher's and the recorded
    one, then loaded into ``name`` for real; problem is None when both pass. ``accept`` records a
    changed hash, once the file loads (never one that differs from the publisher's)."""
    from ferbench.backbones import create_backbone
    from ferbench.backbones.integrity import WeightHashMismatch, check_weight_file, published_sha256, sha256_file

    path = status.path
    sha256 = sha256_file(path)
    published = published_sha256(Path(path))
    if published and published[0] != sha256:
        return sha256, f"differs from the {published[1]} sha256 {published[0]} ({published[2]})"
    if status.ledger_dir is not None and not accept:  # None: a weights.files entry, the user's own file
        try:
            check_weight_file(path, name, status.ledger_dir)
        except WeightHashMismatch as err:
            return err.actual, f"differs from the {err.kind} sha256 {err.expected}; {err.fix}"
    try:
        create_backbone(name, 2, weights_file=path)
    except Exception as err:  # any load failure is the finding this command reports
        return sha256, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    if status.ledger_dir is not None and accept:
        check_weight_file(path, name, status.ledger_dir, accept=True)
    return sha256, None


def cmd_verify(args: argparse.Namespace) -> int:
    from ferbench.backbones import resolve_pretrained

    unknown = _unknown_names(args.names)
    if unknown:
        return _error(unknown)
    weights_dir = _weights_dir(args)
    failed = checked = 0
    for name in args.names or _pretrained_backbones():
        status = resolve_pretrained(name, weights_dir=weights_dir, verify=False)
        if not status.available:
            if args.names:  # asked for by name: its absence is a failure
                print(f"{name:<14}MISSING {status.message}")
                failed += 1
            continue
        checked += 1
        sha256, problem = _verify_one(name, status, args.accept)
        print(f"{name:<14}{'FAILED' if problem else 'OK':<8}{status.path}  sha256={sha256}" + (f": {problem}" if problem else ""))
        failed += bool(problem)
    if not checked and not failed:
        print(f"No pretrained weight files found (weights folder: {weights_dir}); see `ferbench weights list`.")
    return EXIT_FAILED if failed else EXIT_OK


def _save_loadable(state: dict, out: Path, backbone: str) -> None:
    """Write ``state`` to ``out`` atomically, only after it has loaded into ``backbone`` from the temp file,
    and record its SHA-256 in the folder's ledger (it replaces any earlier file of that name on purpose)."""
    import torch

    from ferbench.backbones import create_backbone
    from ferbench.backbones.integrity import record_weight_file

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        create_backbone(backbone, 2, weights_file=tmp_name)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    record_weight_file(out, out.parent, f"written by ferbench weights import-h5 ({backbone})")


def cmd_import_h5(args: argparse.Namespace) -> int:
    from ferbench.backbones import get_backbone_info, resolve_pretrained
    from ferbench.backbones.download import sha256_file
    from ferbench.backbones.h5_import import import_h5
    from ferbench.backbones.weights import default_weights_dir

    if not args.file.is_file():
        return _error(f"{args.file}: no such file")
    out = (args.out or default_weights_dir() / get_backbone_info(args.backbone).weight_filename).expanduser().resolve()
    try:
        state = import_h5(args.file, args.backbone)
        _save_loadable(state, out, args.backbone)
    except (ValueError, OSError, ImportError) as err:  # OSError: an unwritable --out; ImportError: no h5py
        return _error(str(err))
    print(f"{args.backbone}: wrote {out} ({len(state)} tensors, sha256={sha256_file(out)}); loads into {args.backbone}: OK")
    found = resolve_pretrained(args.backbone)
    if found.path != str(out):
        print(f"Studies use {found.path or 'nothing yet'} for {args.backbone}; "
              f"to use this file: --set weights.files.{args.backbone}={out}")
    return EXIT_OK


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_list, "fetch": cmd_fetch, "verify": cmd_verify, "import-h5": cmd_import_h5,
}


def cmd_weights(args: argparse.Namespace) -> int:
    """Run ``ferbench weights <subcommand>``; bad input ends with one ``ferbench: error:`` line and exit code 2."""
    return SUBCOMMANDS[args.weights_command](args)
