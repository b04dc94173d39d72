"""Session-wide fixtures for tests that need real services: a Ceph cluster and an sshd.

Each service is taken from the environment when named there, else started for the session by the
repo's own scripts (and stopped at its end):

    ceph_cluster   ZSAGENT_TEST_CEPH_CONF, ZSAGENT_TEST_CEPH_KEYRING   scripts/ceph-cluster up DIR (memstore)
                   (optional: ZSAGENT_TEST_CEPH_CLIENT, default "admin")
    sshd_server    ZSAGENT_TEST_SSHD_HOST, _PORT, _USER, _KEY, _KNOWN_HOSTS         scripts/sshd up DIR

When a service cannot be had, the tests that need it are skipped, except under CI=true where they fail.
The rados/rbd bindings are imported only inside fixtures, so that unit tests never need them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import unavailable

pytest_plugins = ["secret_scan",  # no secret of the run in the agent's logs, answers, store or files
                  "multi_agent"]  # the fixtures fleet and fleet_pools (several agents on one cluster)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
UP_TIMEOUT = 180  # seconds for a script's `up`; ceph-cluster itself gives up after 120



def unique_pool_name(prefix: str = "zst") -> str:
    """A pool (or image) name no other test or session uses: PREFIX-<8 hex digits>."""
    return f"{prefix}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------- Ceph


class CliError(subprocess.CalledProcessError):
    """A failed `rbd`/`ceph` run: .stdout is bytes, .stderr the decoded text, shown in the message."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


@dataclass(frozen=True)
class CephCluster:
    """How to reach the session's cluster. keyring may be "" when the environment named only a ceph.conf
    (whose own keyring setting then applies)."""

    conf: str
    keyring: str
    client: str = "admin"

    unique_pool_name = staticmethod(unique_pool_name)

    def cli_env(self) -> dict[str, str]:
        """os.environ plus what makes `rbd`, `rados` and `ceph` reach this cluster with no flags."""
        env = dict(os.environ, CEPH_CONF=self.conf)
        args = ["--id", self.client]
        if self.keyring:
            args += ["--keyring", self.keyring]
        env["CEPH_ARGS"] = " ".join(args)  # split on spaces by the tools: paths must not contain any
        return env

    def rados_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for rados.Rados(...)."""
        kwargs: dict[str, Any] = {"conffile": self.conf, "rados_id": self.client}
        if self.keyring:
            kwargs["conf"] = {"keyring": self.keyring}
        return kwargs

    @contextmanager
    def connect(self, timeout: int = 30) -> Iterator[Any]:
        """A connected rados.Rados, shut down on exit."""
        import rados

        conn = rados.Rados(**self.rados_kwargs())
        conn.connect(timeout=timeout)
        try:
            yield conn
        finally:
            conn.shutdown()

    def _cli(self, tool: str, args: tuple[str, ...], input: bytes | None, timeout: float) -> bytes:
        proc = subprocess.run([tool, *args], input=input, env=self.cli_env(), capture_output=True,
                              timeout=timeout, check=False)  # fmt: skip
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise CliError(proc.returncode, [tool, *args], proc.stdout, err)
        return proc.stdout

    def rbd_cli(self, *args: str, input: bytes | None = None, timeout: float = 300) -> bytes:
        """Run `rbd ARGS...` against this cluster; return stdout. Raises CliError (a CalledProcessError)."""
        return self._cli("rbd", args, input, timeout)

    def ceph_cli(self, *args: str, input: bytes | None = None, timeout: float = 120) -> bytes:
        """Run `ceph ARGS...` against this cluster; return stdout."""
        return self._cli("ceph", args, input, timeout)

    def create_rbd_pool(self, name: str) -> None:
        """Create pool NAME (default pg count of the cluster) and initialize it for rbd."""
        import rbd

        with self.connect() as conn:
            conn.create_pool(name)
            with conn.open_ioctx(name) as ioctx:
                rbd.RBD().pool_init(ioctx, False)  # sets application "rbd" on the pool

    def delete_pool(self, name: str) -> None:
        with self.connect() as conn:
            conn.delete_pool(name)


def run_up_script(script: str, workdir: Path, *args: str) -> dict[str, str]:
    """Run `scripts/SCRIPT up WORKDIR ARGS...`; return its exports. Calls unavailable() on failure."""
    argv = [str(SCRIPTS / script), "up", str(workdir), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=UP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"{script} up failed: {e}")
    if proc.returncode != 0:
        unavailable(f"{script} up {workdir} exited {proc.returncode}:\n{proc.stderr}")
    exports = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and sep:
            exports[key] = value
    return exports


def run_down_script(script: str, workdir: Path) -> None:
    proc = subprocess.run([str(SCRIPTS / script), "down", str(workdir)], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"{script} down {workdir} exited {proc.returncode}:\n{proc.stderr}", pytrace=False)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """The cluster named by ZSAGENT_TEST_CEPH_CONF, else a memstore one started for the session."""
    client = os.environ.get("ZSAGENT_TEST_CEPH_CLIENT", "admin")
    conf = os.environ.get("ZSAGENT_TEST_CEPH_CONF")
    if conf:
        if not Path(conf).is_file():
            unavailable(f"ZSAGENT_TEST_CEPH_CONF={conf} is not a file")
        yield CephCluster(conf, os.environ.get("ZSAGENT_TEST_CEPH_KEYRING", ""), client)
        return

    for tool in ("ceph-mon", "ceph-osd", "ceph", "rbd"):
        if shutil.which(tool) is None:
            unavailable(f"no ZSAGENT_TEST_CEPH_CONF and no {tool} to start a cluster (run scripts/setup)")
    workdir = tmp_path_factory.mktemp("ceph")
    exports = run_up_script("ceph-cluster", workdir)
    try:
        yield CephCluster(exports["ZSAGENT_TEST_CEPH_CONF"], exports["ZSAGENT_TEST_CEPH_KEYRING"], client)
    finally:
        run_down_script("ceph-cluster", workdir)


@pytest.fixture(scope="session")
def make_pool(ceph_cluster: CephCluster) -> Iterator[Callable[..., str]]:
    """make_pool(prefix="zst") -> name: creates a new rbd pool; all of them are deleted at session end."""
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError as e:
        unavailable(f"the Ceph python bindings do not import ({e}); run scripts/setup")
    created: list[str] = []

    def make(prefix: str = "zst") -> str:
        name = unique_pool_name(prefix)
        ceph_cluster.create_rbd_pool(name)
        created.append(name)
        return name

    yield make
    for name in created:  # best effort: a cluster named by the environment may refuse pool deletion
        with suppress(Exception):
            ceph_cluster.delete_pool(name)


@pytest.fixture(scope="session")
def ceph_pool(make_pool: Callable[..., str]) -> str:
    """One rbd pool for the whole session (name zst-<hex>)."""
    return make_pool()


@pytest.fixture(scope="session")
def ceph_pool_pair(make_pool: Callable[..., str]) -> tuple[str, str]:
    """(source pool, backup pool) for the whole session, distinct from ceph_pool."""
    return make_pool("zst-src"), make_pool("zst-dst")


# ---------------------------------------------------------------- sshd


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key: str
    known_hosts: str

    def ssh_options(self) -> list[str]:
        """Options for ssh, scp and sftp (not the port: ssh wants -p, scp and sftp -P)."""
        return [
            "-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def ssh_argv(self, *remote_argv: str) -> list[str]:
        """argv of `ssh` running REMOTE_ARGV on the server (the remote shell joins it: quote as needed)."""
        return ["ssh", *self.ssh_options(), "-p", str(self.port), self.destination, "--", *remote_argv]

    def sftp_argv(self, batch_file: str = "-") -> list[str]:
        """argv of `sftp -b BATCH_FILE` ("-": commands from stdin; a failing command fails sftp)."""
        return ["sftp", *self.ssh_options(), "-P", str(self.port), "-b", batch_file, self.destination]


SSHD_ENV = ("HOST", "PORT", "USER", "KEY", "KNOWN_HOSTS")


def _ssh_server(v: dict[str, str]) -> SshServer:
    return SshServer(v["HOST"], int(v["PORT"]), v["USER"], v["KEY"], v["KNOWN_HOSTS"])


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """The sshd named by ZSAGENT_TEST_SSHD_*, else one started for the session on 127.0.0.1."""
    named = {k: os.environ.get(f"ZSAGENT_TEST_SSHD_{k}") for k in SSHD_ENV}
    if any(named.values()):
        missing = [f"ZSAGENT_TEST_SSHD_{k}" for k, v in named.items() if not v]
        if missing:
            unavailable(f"ZSAGENT_TEST_SSHD_* is only partly set: {', '.join(missing)} missing")
        yield _ssh_server(named)  # type: ignore[arg-type]
        return

    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "sftp"):
        if shutil.which(tool) is None:
            unavailable(f"no ZSAGENT_TEST_SSHD_* and no {tool} to start an sshd (run scripts/setup)")
    workdir = tmp_path_factory.mktemp("sshd")
    exports = run_up_script("sshd", workdir)
    try:
        yield _ssh_server({k: exports[f"ZSAGENT_TEST_SSHD_{k}"] for k in SSHD_ENV})
    finally:
        run_down_script("sshd", workdir)


def pytest_terminal_summary(terminalreporter) -> None:
    """The figures measured by the fault and load tests (tests/figures.py), one line each."""
    from figures import FIGURES

    if FIGURES:
        terminalreporter.section("figures")
        for test, text in FIGURES:
            terminalreporter.write_line(f"{test}: {text}")
