"""Library code prints nothing: its notices are log records of loggers under ``ferbench``, which the
CLI shows as the plain lines the library used to print (stderr, or stdout where a record asks for
it), and which a Python program sees only when it configures logging."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferbench.harness.cli.main import main
from ferbench.harness.cli.output import ConsoleHandler, configure_output, restore_output
from ferbench.harness.data.loaders import load_dataset
from ferbench.harness.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]
# Modules allowed to print besides the command line's own (harness/cli/): a maintainer's script.
MAY_PRINT = {"backbones/keras_layers/record.py"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_faces(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("angry", "happy"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def test_loading_a_dataset_prints_nothing_and_its_notices_are_log_records(tmp_path, cache, capfd, caplog):
    faces = write_faces(tmp_path / "faces")
    caplog.set_level(logging.INFO, logger="ferbench")
    dataset = load_dataset(DataSpec(format="auto", path=str(faces)))  # detects the format, writes the cache
    assert len(dataset) == 6
    assert capfd.readouterr() == ("", "")
    [folder] = (cache / "datasets").iterdir()
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("ferbench")]
    assert records == [
        ("ferbench.harness.data.loaders", "INFO", f"data: detected format folder in {faces}"),
        ("ferbench.harness.data.cache", "INFO", f"data: wrote cache {folder}"),
    ]


SCRIPT = """
import sys
from ferbench.harness.data.loaders import load_dataset
from ferbench.harness.spec import DataSpec
if sys.argv[2] == "cli":
    from ferbench.harness.cli.output import configure_output
    configure_output()
load_dataset(DataSpec(format="auto", path=sys.argv[1]))
"""


@pytest.mark.e2e  # two fresh interpreters (the library as a program imports it, with no logging configured)
def test_without_logging_configured_not_even_a_warning_reaches_the_terminal(tmp_path):
    """In a fresh interpreter, as a Python program would call the library: the notices and a warning
    (the dataset cache cannot be written: FERBENCH_CACHE_DIR is below a file) print nothing, not even
    through Python's last-resort handler; configured like the CLI, the same calls show them all."""
    faces = write_faces(tmp_path / "faces")
    (tmp_path / "afile").write_text("")
    env = {**os.environ, "FERBENCH_CACHE_DIR": str(tmp_path / "afile" / "cache")}

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", SCRIPT, str(faces), mode], capture_output=True, text=True, env=env,
                              timeout=120)

    quiet = run("library")
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", "")
    shown = run("cli")
    lines = shown.stderr.splitlines()
    assert shown.returncode == 0 and shown.stdout == "" and len(lines) == 2, shown.stderr
    assert lines[0] == f"data: detected format folder in {faces}"
    assert lines[1].startswith("data: could not write the dataset cache ") and lines[1].endswith("; continuing without it")


def test_the_cli_shows_the_notices_on_stderr_and_keeps_stdout_for_its_output(tmp_path, capsys, caplog):
    faces = write_faces(tmp_path / "faces")
    assert main(["data", "inspect", str(faces), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 6  # stdout is the JSON alone
    [folder] = (tmp_path / "cache" / "datasets").iterdir()
    assert captured.err.splitlines() == [f"data: detected format folder in {faces}", f"data: wrote cache {folder}"]
    logger = logging.getLogger("ferbench")  # and the command leaves logging as it found it
    assert not any(isinstance(h, ConsoleHandler) for h in logger.handlers)
    assert logger.level == logging.NOTSET and logger.propagate
    assert main(["data", "inspect", str(faces), "--json"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"data: detected format folder in {faces}", f"data: cached {folder}"]


def test_configure_output_routes_records_by_stream_and_level_and_is_undone(capsys):
    log = logging.getLogger("ferbench.some.module")
    configure_output()
    configure_output()  # twice: still one handler
    try:
        log.debug("hidden unless verbose")
        log.info("a notice")
        log.info("the study plan", extra={"stream": "stdout"})
        log.warning("data: warning: something")
        assert capsys.readouterr() == ("the study plan\n", "a notice\ndata: warning: something\n")
        configure_output(verbose=True)
        log.debug("detail")
        assert capsys.readouterr().err == "detail\n"
    finally:
        restore_output()
    log.warning("quiet again")
    assert capsys.readouterr() == ("", "")
    logger = logging.getLogger("ferbench")
    assert logger.level == logging.NOTSET and logger.propagate
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]


def test_synth_identity_pretraining_progress_is_a_stdout_notice(cache, capsys, caplog):
    """It was printed on stdout during ``ferbench run``; the CLI still shows it there."""
    from ferbench.harness.train.synth_identity import synth_identity_weights

    recipe = {"num_images": 120, "num_identities": 4, "image_size": 16, "epochs": 1, "lr": 1e-3, "batch_size": 32, "seed": 5}
    configure_output()
    try:
        synth_identity_weights("small_cnn", 16, recipe)
    finally:
        restore_output()
    out, err = capsys.readouterr()
    assert out.startswith("  synth-identity: pretraining small_cnn at 16px on 4 SynthFER identities") and err == ""
    assert "  synth-identity: small_cnn done in " in out


def library_modules() -> list[Path]:
    return sorted(p for folder in ("harness", "backbones", "reports") for p in (ROOT / folder).rglob("*.py")
                  if not p.relative_to(ROOT).as_posix().startswith("harness/cli/"))


def writes_to_the_terminal(node: ast.AST) -> bool:
    """A call of ``print`` or of ``sys.stdout`` / ``sys.stderr`` methods."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "print"
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) and func.value.attr in ("stdout", "stderr")
            and isinstance(func.value.value, ast.Name) and func.value.value.id == "sys")


def test_no_library_module_prints():
    offenders = []
    for path in library_modules():
        name = path.relative_to(ROOT).as_posix()
        if name in MAY_PRINT:
            continue
        nodes = list(ast.walk(ast.parse(path.read_text(), filename=name)))
        calls = [node for node in nodes if writes_to_the_terminal(node)]
        called = {id(call.func) for call in calls}
        offenders += [f"{name}:{node.lineno}" for node in calls]
        offenders += [f"{name}:{node.lineno} (print passed on, e.g. as a default)" for node in nodes  # log=print
                      if isinstance(node, ast.Name) and node.id == "print" and id(node) not in called]
    assert offenders == [], textwrap.fill("print in library code (log through logging.getLogger(__name__)): " + ", ".join(offenders))
