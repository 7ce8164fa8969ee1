"""A one-machine Ray cluster driven by the real commands: ``ray up``, ``ray submit harness/run.py``, ``ray down``.

Ray's ``local`` provider reaches the "remote" head over SSH; here that is an sshd on 127.0.0.1
(random port, reached through ``auth.ssh_proxy_command``, since Ray has no SSH port option), logging
in as a throw-away unprivileged user with its own home and ``RAY_TMPDIR``: the cluster's
``ray stop`` / ``ray down`` can then only touch that user's processes, never root's Ray. The fixture
needs root (it creates the user and runs sshd) and removes every process, file and the user it
created, also when the test fails. Loopback addresses only.
"""

from __future__ import annotations

import csv
import grp
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"sshd": "openssh-server", "rsync": "rsync", "nc": "netcat-openbsd", "setfacl": "acl"}

CLUSTER_TEMPLATE = """\
cluster_name: {name}
provider:
  type: local
  head_ip: 127.0.0.1
  worker_ips: []
auth:
  ssh_user: {user}
  ssh_private_key: {key}
  ssh_proxy_command: "nc 127.0.0.1 {ssh_port}"
file_mounts:
  ~/ferbench: {repo}
rsync_exclude:
  - .git
rsync_filter:
  - .gitignore
setup_commands:
  - python -m pip install -q --user --no-deps --no-build-isolation --disable-pip-version-check -e ~/ferbench
head_start_ray_commands:
  - ray stop
  - >-
    unset OMP_NUM_THREADS; ray start --head --node-ip-address=127.0.0.1 --port={ports[0]} --num-cpus=2
    --include-dashboard=false --disable-usage-stats --node-manager-port={ports[1]} --object-manager-port={ports[2]}
    --dashboard-agent-listen-port={ports[3]} --dashboard-agent-grpc-port={ports[4]} --metrics-export-port={ports[5]}
    --runtime-env-agent-port={ports[6]}
    --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands: []
"""

# The tiny study: 2 arms (seeds) of the small CNN, 2 epochs, 240 SynthFER images at 24 px. The
# storage is relative on purpose: the driver resolves it against its working directory, the home.
STUDY_ARGS = [
    "quick", "--storage", "results", "--set", "run.name=on-cluster",
    "--set", "grid.backbone=[small_cnn]", "--set", "grid.init=[random]", "--set", "grid.seed=[0,1]",
    "--set", "train.epochs=2", "--set", "data.num_images=240", "--set", "data.image_size=24",
    "--set", "resources.cpu=1",
]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _require_programs() -> None:
    """sshd, rsync, nc and setfacl, or skip naming the install command (fail under CI=true: .ci/run installs them)."""
    missing = [package for tool, package in PACKAGES.items() if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        tools = [tool for tool, package in PACKAGES.items() if package in missing]
        reason = (f"the one-machine cluster needs {', '.join(tools)}: "
                  f"apt-get update && apt-get install -y {' '.join(missing)}")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class LocalCluster:
    """Everything the fixture created, so that teardown can undo exactly that."""

    root: Path
    user: str = ""
    home: Path | None = None
    ray_tmpdir: Path | None = None
    config: Path | None = None
    ssh_port: int = 0
    sshd: subprocess.Popen | None = None
    granted: list[tuple[Path, int, bool]] = field(default_factory=list)  # (directory, mode, had an ACL) we opened
    timings: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a ``ray`` cluster command on this machine, as a user would from the laptop; time it."""
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", *args], capture_output=True, text=True,
            env=self.env, cwd=REPO, timeout=timeout,
        )
        self.timings[f"ray {args[0]}"] = round(time.monotonic() - start, 1)
        return result


def _grant_traverse(cluster: LocalCluster, target: Path) -> None:
    """Let the cluster user reach ``target`` (root's Python, the checkout) through closed parents, by ACL."""
    for folder in [*reversed(target.parents), target]:
        mode = folder.stat().st_mode
        if folder.is_dir() and not mode & stat.S_IXOTH and folder not in [g[0] for g in cluster.granted]:
            had_acl = bool(subprocess.run(["getfacl", "-s", "-p", str(folder)], capture_output=True, text=True).stdout.strip())
            subprocess.run(["setfacl", "-m", f"u:{cluster.user}:x", str(folder)], check=True)
            cluster.granted.append((folder, stat.S_IMODE(mode), had_acl))


def _write_user_files(cluster: LocalCluster, public_key: str) -> None:
    python_bin = Path(sys.executable).resolve().parent
    uid, gid = pwd.getpwnam(cluster.user).pw_uid, grp.getgrnam(cluster.user).gr_gid
    ssh_dir = cluster.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(public_key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    # Sourced by every command Ray runs over SSH (bash --login -i, then `source ~/.bashrc`).
    (cluster.home / ".bashrc").write_text(
        f"export PATH={python_bin}:$HOME/.local/bin:/usr/local/bin:/usr/bin:/bin\n"
        f"export RAY_TMPDIR={cluster.ray_tmpdir}\n"
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1\n"
    )
    cluster.ray_tmpdir.mkdir()
    for path in [cluster.home, ssh_dir, *ssh_dir.iterdir(), cluster.home / ".bashrc", cluster.ray_tmpdir]:
        os.chown(path, uid, gid)


def _start_sshd(cluster: LocalCluster) -> None:
    host_key = cluster.root / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = cluster.root / "sshd_config"
    config.write_text(
        f"Port {cluster.ssh_port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {cluster.root / 'sshd.pid'}\nAllowUsers {cluster.user}\nAuthorizedKeysFile .ssh/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n"
        "PermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding yes\nMaxSessions 50\nMaxStartups 50\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    cluster.sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
        stderr=open(cluster.root / "sshd.log", "w"),
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", cluster.ssh_port), timeout=1).close()
            return
        except OSError:
            assert cluster.sshd.poll() is None, (cluster.root / "sshd.log").read_text()
            time.sleep(0.1)
    raise RuntimeError("sshd did not start listening")


def _check_login(cluster: LocalCluster, key: Path) -> None:
    """Fail in seconds, with sshd's log, if the user cannot log in or cannot import Ray and FERBench."""
    login = subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=10", "-o", f"ProxyCommand=nc 127.0.0.1 {cluster.ssh_port}", f"{cluster.user}@127.0.0.1",
         "bash --login -c -i 'source ~/.bashrc; python -c \"import ferbench.harness, ray; print(ray.__version__)\"'"],
        capture_output=True, text=True, timeout=60,
    )
    assert login.returncode == 0, login.stderr[-2000:] + (cluster.root / "sshd.log").read_text()[-2000:]


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid → (uid, parent pid, command line), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines() if ":\t" in line)
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            table[int(entry.name)] = (int(status["Uid"].split()[0]), int(status["PPid"]), cmdline)
        except (OSError, KeyError, ValueError):  # gone meanwhile
            continue
    return table


def _processes_of(cluster: LocalCluster) -> list[int]:
    """Processes this fixture is responsible for: the cluster user's, our sshd's, root's SSH clients to our port."""
    table = _process_table()
    uid = pwd.getpwnam(cluster.user).pw_uid if cluster.user and _user_exists(cluster.user) else None
    proxy = f"nc 127.0.0.1 {cluster.ssh_port}"
    mine = {pid for pid, (owner, _, cmdline) in table.items() if owner == uid or (cluster.ssh_port and proxy in cmdline)}
    if cluster.sshd is not None:
        family, grew = {cluster.sshd.pid}, True
        while grew:
            children = {pid for pid, (_, parent, _) in table.items() if parent in family} - family
            family |= children
            grew = bool(children)
        mine |= family & set(table)
    return sorted(mine - {os.getpid()})


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _teardown(cluster: LocalCluster) -> None:
    if cluster.user:
        # The cluster's own stop first (as the user: it cannot reach root's Ray), then whatever is left.
        subprocess.run(
            ["su", "-", cluster.user, "-c", "bash -c 'source ~/.bashrc; ray stop --force'"],
            capture_output=True, timeout=120,
        )
    left = _processes_of(cluster)  # before sshd goes: its session processes are found as its children
    if cluster.sshd is not None and cluster.sshd.poll() is None:
        cluster.sshd.send_signal(signal.SIGTERM)
        try:
            cluster.sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cluster.sshd.kill()
            cluster.sshd.wait()
    for _ in range(3):
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        left = _processes_of(cluster)
        if not left:
            break
    for folder, mode, had_acl in cluster.granted:
        subprocess.run(["setfacl", "-x", f"u:{cluster.user}", str(folder)], check=False)
        if not had_acl:
            subprocess.run(["setfacl", "-b", str(folder)], check=False)
        os.chmod(folder, mode)
    if cluster.user:
        subprocess.run(["userdel", "-r", cluster.user], capture_output=True)
    if cluster.config is not None:  # what the launching side keeps per cluster: state, config caches, SSH sockets
        name, tmp = cluster.config.stem, Path(tempfile.gettempdir())
        for leftover in (tmp / "ray").glob(f"cluster-{name}.*"):
            leftover.unlink(missing_ok=True)
        for leftover in [*tmp.glob("ray-config-*"), *tmp.glob("ray-bootstrap-*")]:
            if leftover.is_file() and name in leftover.read_text(errors="replace"):
                leftover.unlink(missing_ok=True)
        for control in tmp.glob(f"ray_ssh_*/{hashlib.sha256(name.encode()).hexdigest()[:10]}"):
            shutil.rmtree(control, ignore_errors=True)
            if not any(control.parent.iterdir()):
                control.parent.rmdir()
    if cluster.user:
        shutil.rmtree(Path(tempfile.gettempdir(), f"torchinductor_{cluster.user}"), ignore_errors=True)
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def local_cluster():
    if os.geteuid() != 0:
        reason = "the one-machine cluster needs root (it creates a user and runs sshd): run the tests as root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    _require_programs()
    tag = secrets.token_hex(3)
    cluster = LocalCluster(root=Path(tempfile.mkdtemp(prefix=f"fbc-{tag}-", dir="/tmp")))
    os.chmod(cluster.root, 0o755)
    try:
        cluster.user, cluster.home = f"fbc-{tag}", cluster.root / "home"
        cluster.ray_tmpdir = cluster.root / "rt"  # short: Ray's socket paths live under it
        subprocess.run(["useradd", "--create-home", "--home-dir", str(cluster.home), "--shell", "/bin/bash",
                        "--user-group", cluster.user], check=True, capture_output=True)
        # No password, but not locked: sshd (without PAM) refuses a locked account even with a key.
        subprocess.run(["usermod", "-p", "*", cluster.user], check=True)
        key = cluster.root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        _write_user_files(cluster, (cluster.root / "id_ed25519.pub").read_text())
        for target in (Path(sys.executable).resolve().parent, Path(pytest.__file__).resolve().parents[1], REPO):
            _grant_traverse(cluster, target)
        cluster.ssh_port, *ray_ports = _free_ports(8)
        _start_sshd(cluster)
        _check_login(cluster, key)
        cluster.config = cluster.root / f"cluster-local-{tag}.yaml"
        cluster.config.write_text(CLUSTER_TEMPLATE.format(
            name=cluster.config.stem, user=cluster.user, key=key, ssh_port=cluster.ssh_port, repo=REPO, ports=ray_ports,
        ))
        cluster.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
        }
        yield cluster
    finally:
        _teardown(cluster)
        assert not _processes_of(cluster), "processes of the one-machine cluster survived its teardown"


def _wait_until_no_processes_of(user: str, timeout: float = 30) -> bool:
    uid = pwd.getpwnam(user).pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [pid for pid, (owner, _, _) in _process_table().items() if owner == uid]:
            return True
        time.sleep(0.5)
    return False


def _read_epochs(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_ray_up_submit_down_on_one_machine(local_cluster, record_property):
    cluster = local_cluster
    config = str(cluster.config)

    up = cluster.ray("up", "-y", "--no-config-cache", "--disable-usage-stats", config, timeout=300)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:] + (cluster.root / "sshd.log").read_text()[-2000:]

    submit = cluster.ray("submit", "--no-config-cache", "--disable-usage-stats", config, str(REPO / "harness" / "run.py"),
                         "--", *STUDY_ARGS, timeout=600)
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-6000:]
    print(submit.stdout[-3000:])

    # The driver ran on the head as the cluster user, resolved the relative --storage against that
    # user's home, and attached to the cluster `ray up` started (one Ray session, not one of its own).
    experiment = cluster.home / "results" / "on-cluster"
    assert f"→ {experiment}" in output
    sessions = list((cluster.ray_tmpdir / "ray").glob("session_2*"))
    assert len(sessions) == 1, f"the driver started a Ray of its own: {sessions}"
    assert "Done: 2 completed." in output, output[-6000:]
    report = (experiment / "report" / "report.md").read_text()
    for seed in (0, 1):
        assert f"| small_cnn_random_baseline_s{seed} | completed |" in report
    rows = _read_epochs(experiment / "report" / "tables" / "epochs.csv")
    assert sorted((row["seed"], row["epoch"]) for row in rows) == [(s, e) for s in "01" for e in "012"]
    assert all(path.owner() == cluster.user for path in experiment.rglob("result.json"))

    down = cluster.ray("down", "-y", config, timeout=180)
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-4000:]
    assert _wait_until_no_processes_of(cluster.user), "ray down left processes of the cluster user running"

    print(f"one-machine cluster timings (s): {cluster.timings}")
    for step, seconds in cluster.timings.items():
        record_property(step, seconds)
