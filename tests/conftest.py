"""Fixtures shared by the test modules; plain helpers live in tests/helpers.py (``from helpers import ...``).

The default suite runs in two processes (pytest-xdist, ``-n 2 --dist loadscope`` in pyproject's addopts:
each test module runs whole in one of them, its module fixtures once). One Ray per test process: ``RAY_ADDRESS=local`` keeps every study of the process
on a private local Ray (never a cluster that happens to run on this machine, nor the other process's), started
once by ``init_ray`` (the first study, or the ``local_ray`` fixture) and left running: ``init_ray`` returns at
once while it is up. Tests that need another Ray (a multi-node cluster, workers with other environment
variables) are marked ``e2e``. The session's reference studies run once for both processes (``run_once``).
"""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["RAY_ADDRESS"] = "local"  # a private Ray for this session, whatever cluster runs on the machine
# Dataset and synth-identity caches: never the user's, and one per test process (an xdist worker inherits
# the controller's environment, so a folder this file made there is replaced, never shared).
if os.environ.get("FERBENCH_CACHE_DIR", "") in ("", os.environ.get("FERBENCH_TEST_CACHE_DIR")):
    import atexit
    import shutil
    import tempfile

    os.environ["FERBENCH_CACHE_DIR"] = os.environ["FERBENCH_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="ferbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FERBENCH_CACHE_DIR"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _needs(program: str, install: str):
    """Skip naming the install command, or fail under ``CI=true`` (where a missing program is a broken setup)."""
    reason = f"{program} is not installed: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """Empty FERBench weights folder and Hugging Face cache, so weight lookups see only what a test puts there.

    huggingface_hub reads its cache location once at import, so the constant is patched too.
    Returns ``(weights_dir, hub_cache)``.
    """
    import huggingface_hub.constants

    weights_dir, hf_home = tmp_path / "ferbench_weights", tmp_path / "hf_home"
    hub_cache = hf_home / "hub"
    for folder in (weights_dir, hub_cache):
        folder.mkdir(parents=True)
    monkeypatch.setenv("FERBENCH_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    return weights_dir, hub_cache


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, options)``: a tmpfs (e.g. ``"size=3m"``, ``"ro,size=1m"``) mounted at
    ``tmp_path / name``, unmounted after the test. Mounting needs root or CAP_SYS_ADMIN: elsewhere the
    test skips, never under ``CI=true``."""
    import subprocess

    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"mounting a tmpfs needs root or CAP_SYS_ADMIN (run the tests as root): {done.stderr.strip()}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    """The repository root on ``sys.path`` for the test, so that ``benchmarks`` (a folder of scripts, not part
    of the installed package) imports under plain ``pytest`` as it does under ``python -m pytest``."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


# --------------------------------------------------------------------------- one Ray, one reference experiment


@pytest.fixture
def local_ray():
    """The session's private local Ray (``ray``), started by ``init_ray`` as a study starts it if no study has
    yet (or an ``e2e`` test stopped it). For tests that use Ray directly; ``run_study`` starts it itself."""
    import ray

    from ferbench.harness.study.engine import init_ray

    init_ray()
    return ray


def run_once(tmp_path_factory, name: str, run):
    """``run(folder)``'s outcome, computed once for the whole test run: the first test process (xdist worker)
    to ask runs it in ``<shared temp root>/<name>`` while the others wait on a lock, then read the outcome it
    recorded. The session studies are read-only to the tests, so the processes can share them."""
    import pickle

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temp folder, above each worker's own
    record = root / f"{name}.outcome.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if record.is_file():
            return pickle.loads(record.read_bytes())
        folder = root / name
        folder.mkdir()
        outcome = run(folder)
        record.write_bytes(pickle.dumps(outcome))
    return outcome


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory):
    """The session's reference experiment, run once: 2 backbones (small_cnn, mobilenet_v1) × pretrained
    (weight files written here) and random × seeds 0 and 1, 3 epochs, plus pseudo-labelling arms on the
    random small_cnn (``helpers.REFERENCE``). The report, HTML, sample-prediction, statistics and damaged-
    file tests read it (copy it before changing anything); re-runs of its random small_cnn arms
    (``helpers.SMALL``) must reproduce its numbers. Returns the ``StudyOutcome``."""
    from helpers import REFERENCE, reference_weight_files

    from ferbench.harness.spec import load_spec
    from ferbench.harness.study.engine import run_study

    def run(folder):
        spec = load_spec("quick", [*REFERENCE, *reference_weight_files(folder), f"run.storage={folder}", "run.name=reference"])
        outcome = run_study(spec)
        assert set(outcome.statuses.values()) == {"completed"}, outcome.statuses
        return outcome

    return run_once(tmp_path_factory, "reference", run)


@pytest.fixture(scope="session")
def folds_study(tmp_path_factory):
    """A second, different experiment on the reference's data: the random small_cnn (seed 0) with the head
    alone training (head_only freezing, the arsirii_au head), 1 epoch, on folds 0 and 2 of a subject-exclusive
    3-fold split. Read by the freezing and k-fold tests, and set beside the reference by ``--compare``."""
    from helpers import SMALL

    from ferbench.harness.spec import load_spec
    from ferbench.harness.study.engine import run_study

    def run(storage):
        spec = load_spec("quick", [*SMALL, "grid.seed=[0]", "train.epochs=1", "split.unlabeled_fraction=0",
                                   "train.freeze.policy=head_only", "train.head=arsirii_au", "split.kind=subject_kfold",
                                   "split.k=3", "split.folds=[0,2]", f"run.storage={storage}", "run.name=frozen-folds"])
        return run_study(spec)

    return run_once(tmp_path_factory, "folds", run)


# --------------------------------------------------------------------------- report.html in headless Chromium

CHROMIUM_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def chromium():
    """``chromium(page, profile, *args)``: headless Chromium on ``page`` (``--dump-dom`` prints the DOM),
    its stdout. Without Chromium the test skips naming the install command (fails under CI=true)."""
    import shutil
    import subprocess

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        _needs("Chromium (to test report.html)", "apt-get update && apt-get install -y chromium")

    def run(page: Path, profile: Path, *args: str) -> str:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                   f"--user-data-dir={profile}", "--window-size=1280,4000", *args, page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return run
