"""FERBench installs under one namespace: ``ferbench.harness``, ``ferbench.backbones``, ``ferbench.reports``.

The repository keeps its ``harness/``, ``backbones/`` and ``reports/`` folders; setuptools' package-dir
mapping installs them under ``ferbench``, so a researcher's own ``reports/`` folder (the common
data-science layout) and FERBench never shadow each other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("harness", "backbones", "reports")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # -c puts the working directory first on sys.path, as a notebook started there does.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def _project_with_its_own_folders(tmp_path: Path) -> Path:
    project = tmp_path / "my_project"
    for name in FOLDERS:
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"OWNER = 'my_project.{name}'\n")
    return project


@pytest.mark.e2e  # a fresh interpreter started in the project folder (its folders first on sys.path)
def test_a_project_with_its_own_reports_harness_and_backbones_folders_gets_ferbench(tmp_path):
    project = _project_with_its_own_folders(tmp_path)
    code = (
        "import ferbench.reports, ferbench.harness.spec, ferbench.backbones, reports, harness, backbones\n"
        "print(ferbench.reports.build_report.__module__, ferbench.harness.spec.load_spec('quick').study,\n"
        "      'small_cnn' in ferbench.backbones.list_backbones(), reports.OWNER, harness.OWNER, backbones.OWNER)\n"
    )
    result = _python(code, project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ferbench.reports", "quick", "True", "my_project.reports", "my_project.harness",
                                     "my_project.backbones"]


def test_nothing_generic_is_importable_at_the_top_level(tmp_path):
    code = "import importlib.util as u; print([n for n in ('harness', 'backbones', 'reports') if u.find_spec(n)])"
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_package_folder_is_installed():
    """pyproject's explicit package list names every folder with an ``__init__.py`` (a non-editable
    install ships only what it names)."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"ferbench"} | {
        ".".join(["ferbench", *init.parent.relative_to(REPO).parts])
        for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")
    }
    assert listed == found


@pytest.mark.e2e  # harness/run.py in a subprocess
def test_run_py_copied_alone_runs_from_a_folder_with_a_harness_of_its_own(tmp_path):
    """``ray submit`` copies harness/run.py alone to the head's home; there it imports the installed ferbench."""
    project = _project_with_its_own_folders(tmp_path)
    shutil.copy(REPO / "harness" / "run.py", project / "run.py")
    result = subprocess.run([sys.executable, "run.py", "--print-spec"], cwd=project, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "study: quick" in result.stdout


@pytest.mark.e2e  # harness/run.py in a subprocess
def test_run_py_from_the_checkout_prints_the_spec():
    result = subprocess.run([sys.executable, "harness/run.py", "--print-spec", "--set", "train.epochs=3"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "epochs: 3" in result.stdout
