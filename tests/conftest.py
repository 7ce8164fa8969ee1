import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "FERBENCH_CACHE_DIR" not in os.environ:  # dataset and synth-identity caches: never the user's
    import atexit
    import shutil
    import tempfile

    os.environ["FERBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="ferbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FERBENCH_CACHE_DIR"], True)

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
