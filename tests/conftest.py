import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "FERBENCH_CACHE_DIR" not in os.environ:  # dataset and synth-identity caches: never the user's
    import atexit
    import shutil
    import tempfile

    os.environ["FERBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="ferbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FERBENCH_CACHE_DIR"], True)

from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


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


def resume_points(experiment: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """arm → the epoch ``--resume`` must continue at: one after its newest checkpoint whose weights and
    history are both intact (what the trial restores; a cut one is passed over)."""
    from ferbench.harness.study.checkpoints import checkpoint_dirs, read_checkpoint

    points = {}
    for folder in experiment.glob("small_cnn_*"):
        arm = folder.name.rsplit("_", 2)[0]
        restored = next(filter(None, map(read_checkpoint, checkpoint_dirs(folder))), None)
        if restored is not None and arm not in skip:
            points[arm] = restored[0]["epoch"] + 1
    return points


def assert_continued(trials, points: dict[str, int]) -> None:
    """Each arm in ``points`` continued at its epoch (``trials.resumed_at_epochs``), not from scratch."""
    resumed = {arm: {int(float(e)) for e in str(value).split() if e != "nan"}
               for arm, value in zip(trials.arm_id, trials.resumed_at_epochs)}
    for arm, epoch in points.items():
        assert epoch in resumed[arm], (arm, epoch, resumed)


# --------------------------------------------------------------------------- report.html in headless Chromium

CHROMIUM_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; without one the test skips naming the install command (fails under CI=true)."""
    import shutil

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Chromium is needed to test report.html: apt-get update && apt-get install -y chromium")
        pytest.skip("Chromium is not installed: apt-get update && apt-get install -y chromium")
    return binary


def run_chromium(binary: str, page: Path, profile: Path, *args: str) -> str:
    import subprocess

    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--window-size=1280,4000", *args, page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """What the tests look at in a page: images, tables (cell texts per row), links, headings, attributes."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.body: dict = {}
        self.headers: list[dict] = []  # attributes of every <th>
        self.dts: list[str] = []
        self._cell: list[str] | None = None
        self._dt: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "body":
            self.body = attrs
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
            if tag == "th":
                self.headers.append(attrs)
        elif tag == "dt":
            self._dt = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "dt" and self._dt is not None:
            self.dts.append("".join(self._dt).strip())
            self._dt = None

    def handle_data(self, data):
        for buffer in (self._cell, self._dt):
            if buffer is not None:
                buffer.append(data)




# --------------------------------------------------------------------------- the pseudo-labelling studies' settings

PL_ARM = "small_cnn_random_pseudo_label_s0"
PL_STUDY = [
    "data.num_images=600", "data.image_size=24", "train.epochs=2", "train.batch_size=32", "train.augment.enabled=false",
    "grid.backbone=[small_cnn]", "grid.init=[random]", "grid.variant=[baseline,pseudo_label]", "grid.exclude=[]",
    "split.unlabeled_fraction=0.3", "pseudo_label.threshold=0.3", "pseudo_label.max_rounds=2",
    "pseudo_label.epochs_per_round=1", "train.lr=3e-3", "resources.cpu=1", "run.keep_checkpoints=20",
]


def only_trial_folder(outcome, arm: str) -> Path:
    """The arm's one trial folder in a study's outcome (a study run once, not resumed)."""
    (folder,) = [p for p in outcome.experiment_dir.glob(f"{arm}_*") if p.is_dir()]
    return folder
