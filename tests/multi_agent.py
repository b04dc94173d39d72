"""Several real `zsagent serve` daemons on one Ceph cluster, as an operator runs them on every mon host.

Each agent has its own port, data dir, config file and log, and the same primary and backup storages
(a Ceph pool primary storage; a Ceph pool backup storage and a filesystem backup storage on one shared
directory, as a shared mount would be), and the same RADOS store (``[store] backend = "rados"``, a pool
and a namespace of the test's own) with a short liveness lease (``[cluster] lease_s``). Agents are real
processes, so that a test can SIGKILL one (with the fault hook ZSAGENT_FAULT, zsagent/faults.py) and
restart it. What is left on the cluster is looked at with the `rbd` tool, md5s with `rbd export | md5sum`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from agent_harness import ACCOUNT, SESSION, free_port
from reliability.crash_site import Daemon, WebHook, toml_text

MiB = 1024 * 1024
ZSAGENT = [sys.executable, "-m", "zsagent"]
AUTH = {"Authorization": f"OAuth {SESSION}"}
API = "/zstack/v1"

LEASE_S = 3
"""The agents' liveness lease ([cluster] lease_s): short, so that a takeover happens within seconds."""
TAKEOVER_MARGIN_S = 10
"""How long after a dead agent's lease ran out a live one may take to fail its jobs (its round every
lease_s/2, a loaded host)."""
CEPH_WATCH_TIMEOUT_S = 30
"""Ceph's osd_client_watch_timeout: a killed agent's watch on the .part image it was writing holds that
long, and until it ends the image cannot be removed (unless the dead client is blocklisted)."""
LEFTOVERS_BOUND_S = LEASE_S + CEPH_WATCH_TIMEOUT_S + 15
"""How long after a kill -9 the takeover may take to remove the dead agent's Ceph leftovers."""
VOLUME_LOCK_WAIT_S = 120
"""[cluster] volume_lock_wait_s: how long a request waits behind another agent's copy of its volume."""


@dataclass(frozen=True)
class FleetPools:
    """The session's pools for multi-agent tests: volumes (primary storage), templates (backup storage),
    the RADOS store's records."""

    primary: str
    backup: str
    store: str


@dataclass
class Volume:
    """An RBD volume in the primary pool; ``md5``: of its bytes, by `rbd export | md5sum`."""

    uuid: str
    size: int
    md5: str


@dataclass
class AgentProcess:
    """One agent of the fleet: ``name`` (A, B, ...) in test messages, ``agent_id`` its [cluster] id."""

    name: str
    agent_id: str
    port: int
    config: Path
    log: Path
    env: dict[str, str]
    daemon: Daemon | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the process ------------------------------------------------------------------------------------

    def start(self, fault: str | None = None) -> Daemon:
        """Start `zsagent serve` (``fault``: ZSAGENT_FAULT for this run); does not wait for it."""
        assert self.daemon is None or self.daemon.process.poll() is not None, f"agent {self.name} is running"
        env = {k: v for k, v in self.env.items() if k != "ZSAGENT_FAULT"}
        if fault:
            env["ZSAGENT_FAULT"] = fault
        self.starts += 1
        started = time.monotonic()
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {self.starts} (fault: {fault or 'none'}) =====\n".encode())
            out.flush()
            process = subprocess.Popen([*ZSAGENT, "serve", "--config", str(self.config)], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.daemon = Daemon(process, self.url, self.log, started)
        return self.daemon

    def wait_serving(self, timeout_s: float = 90) -> float:
        assert self.daemon is not None, f"agent {self.name} was never started"
        return self.daemon.wait_serving(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.daemon is not None and self.daemon.process.poll() is None:
            self.daemon.process.send_signal(signal.SIGKILL)
            self.daemon.process.wait(30)

    def wait_exit(self, timeout_s: float = 120) -> int:
        assert self.daemon is not None
        try:
            return self.daemon.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {self.name} still running after {timeout_s} s:\n{self.tail()}") from None

    def stop(self) -> int | None:
        """SIGTERM and wait (the daemon drains); its exit status, None when it was not running."""
        if self.daemon is None or self.daemon.process.poll() is not None:
            return None
        return self.daemon.stop()

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- the API ------------------------------------------------------------------------------------------

    def create(self, volume: str, image: str, backup_storages: Iterable[str], job: str | None = None,
               hook: str | None = None, timeout_s: float = 180) -> httpx.Response:
        """CreateDataVolumeTemplateFromVolume; with ``job`` asynchronous (X-Job-UUID, and ``hook``)."""
        headers = dict(AUTH)
        if job:
            headers["X-Job-UUID"] = job
        if hook:
            headers["X-Web-Hook"] = hook
        body = {"params": {"name": f"tmpl-{image[:8]}", "resourceUuid": image,
                           "backupStorageUuids": list(backup_storages)}}
        return httpx.post(f"{self.url}{API}/images/data-volume-templates/from/volumes/{volume}", json=body,
                          headers=headers, timeout=timeout_s)

    def poll(self, job: str) -> httpx.Response:
        return httpx.get(f"{self.url}{API}/api-jobs/{job}", headers=AUTH, timeout=30)

    def wait_job(self, job: str, timeout_s: float = 180) -> httpx.Response:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.poll(job)
            if answer.status_code != 202:
                return answer
            time.sleep(0.1)
        raise AssertionError(f"job {job} still running on {self.name} after {timeout_s} s")

    def progress(self, job: str) -> dict | None:
        """The job's one TaskProgressInventory, as this agent tells it; None when it has none."""
        answer = httpx.get(f"{self.url}{API}/task-progresses/{job}", headers=AUTH, timeout=30)
        answer.raise_for_status()
        found = answer.json()["inventories"]
        return found[0] if found else None

    def get_image(self, image: str) -> list[dict]:
        answer = httpx.get(f"{self.url}{API}/images/{image}", headers=AUTH, timeout=30)
        answer.raise_for_status()
        return answer.json()["inventories"]

    def query_images(self, **params: str) -> list[dict]:
        answer = httpx.get(f"{self.url}{API}/images", params=params, headers=AUTH, timeout=30)
        answer.raise_for_status()
        return answer.json()["inventories"]

    def delete(self, image: str, timeout_s: float = 120) -> httpx.Response:
        return httpx.delete(f"{self.url}{API}/images/{image}", headers=AUTH, timeout=timeout_s)

    def check(self) -> subprocess.CompletedProcess:
        """`zsagent check` with this agent's config."""
        return subprocess.run([*ZSAGENT, "check", "--config", str(self.config)], capture_output=True, text=True,
                              timeout=120, env=self.env)


@dataclass
class Fleet:
    """``names`` agents on the session's Ceph cluster with one RADOS store (its own namespace)."""

    tmp: Path
    ceph: object  # tests.conftest.CephCluster
    pools: FleetPools
    names: tuple[str, ...] = ("A", "B", "C")
    lease_s: int = LEASE_S
    store_pool: str | None = None  # None: pools.store
    store_backend: str = "rados"  # "sqlite": each agent its own store, no [store] or [cluster] section
    namespace: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:12]}")
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.primary_uuid, self.ceph_bs, self.file_bs = (uuid.uuid4().hex for _ in range(3))
        self.shared_dir = self.tmp / "shared-bs"  # the filesystem backup storage every agent mounts
        self.shared_dir.mkdir(parents=True)
        self.sessions = self.tmp / "sessions"
        self.sessions.write_text(f"# test sessions\n{SESSION} {ACCOUNT}\n")
        self.hook = WebHook()
        self.volumes: list[Volume] = []
        for name in self.names:
            self.agents[name] = self._agent(name)

    def _agent(self, name: str) -> AgentProcess:
        root = self.tmp / f"agent-{name}"
        (root / "tmp").mkdir(parents=True)
        port = free_port()
        agent_id = f"agent-{name.lower()}-{port}"
        config = root / "zsagent.toml"
        config.write_text(toml_text(self.config_document(root, port, agent_id)))
        env = {**os.environ, "TMPDIR": str(root / "tmp"), "PYTHONFAULTHANDLER": "1"}
        return AgentProcess(name, agent_id, port, config, root / "agent.log", env)

    def config_document(self, root: Path, port: int, agent_id: str) -> dict:
        """One agent's configuration: everything but listen, data_dir and agent_id is the same for all."""
        shared = {
            "store": {"backend": "rados", "pool": self.store_pool or self.pools.store, "namespace": self.namespace},
            "cluster": {"agent_id": agent_id, "lease_s": self.lease_s, "volume_lock_wait_s": VOLUME_LOCK_WAIT_S},
        } if self.store_backend == "rados" else {}
        return {
            "agent": {"listen": f"127.0.0.1:{port}", "data_dir": str(root / "data"), "max_jobs": 2,
                      "spool_dir": str(root / "spool")},
            # the volumes carry no owner (ZStack writes none): every account may use them here
            "auth": {"sessions_file": str(self.sessions), "unknown_volume_owner": "allow"},
            "ceph": {"backend": "rados", "conf": self.ceph.conf, "keyring": self.ceph.keyring,
                     "rados_osd_op_timeout": 20, "rados_mon_op_timeout": 20, "client_mount_timeout": 20},
            **shared,
            "pipeline": {"chunk_bytes": 256 * 1024, "depth": 4},
            "virt": {"enabled": False},
            "primary_storage": [{"uuid": self.primary_uuid, "type": "ceph", "pools": [self.pools.primary]}],
            "backup_storage": [
                {"uuid": self.ceph_bs, "type": "ceph", "pool": self.pools.backup, "default": True},
                {"uuid": self.file_bs, "type": "filesystem", "path": str(self.shared_dir), "format": "raw"}],
        }

    def __getitem__(self, name: str) -> AgentProcess:
        return self.agents[name]

    # -- the agents ---------------------------------------------------------------------------------------

    def start(self, faults: dict[str, str] | None = None, names: Iterable[str] | None = None) -> None:
        """Start the agents (all, or ``names``; ``faults``: ZSAGENT_FAULT by name) and wait until each answers."""
        chosen = list(names or self.names)
        for name in chosen:
            self.agents[name].start((faults or {}).get(name))
        for name in chosen:
            self.agents[name].wait_serving()

    def close(self) -> None:
        """Stop every agent (SIGTERM, drain), then remove the test's templates and volumes."""
        with ThreadPoolExecutor(len(self.agents)) as pool:
            list(pool.map(lambda a: a.stop(), self.agents.values()))
        self.hook.close()
        for volume in self.volumes:
            self._remove_volume(volume.uuid)

    # -- volumes and what is on the cluster ---------------------------------------------------------------

    def rbd(self, *args: str) -> str:
        return self.ceph.rbd_cli(*args).decode()

    def make_volume(self, size: int = 8 * MiB) -> Volume:
        """An RBD volume with random data in every other MiB (holes between); md5 by `rbd export | md5sum`."""
        import rbd

        vol = uuid.uuid4().hex
        with self.ceph.connect() as cluster, cluster.open_ioctx(self.pools.primary) as ioctx:
            rbd.RBD().create(ioctx, vol, size, old_format=False)
            with rbd.Image(ioctx, vol) as image:
                for offset in range(0, size, 2 * MiB):
                    image.write(os.urandom(min(MiB, size - offset)), offset)
        volume = Volume(vol, size, self.export_md5(self.pools.primary, vol))
        self.volumes.append(volume)
        return volume

    def export_md5(self, pool: str, image: str) -> str:
        env = self.ceph.cli_env()
        export = subprocess.Popen(["rbd", "export", "--no-progress", f"{pool}/{image}", "-"], stdout=subprocess.PIPE,
                                  env=env)
        out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
        export.stdout.close()
        assert export.wait() == 0, f"rbd export {pool}/{image} failed"
        return out.stdout.split()[0]

    def snapshots(self, volume: str) -> list[str]:
        """`rbd snap ls` of a volume: the snapshots' names."""
        return [s["name"] for s in json.loads(self.rbd("snap", "ls", "--format", "json",
                                                       f"{self.pools.primary}/{volume}"))]

    def backup_images(self) -> list[str]:
        """`rbd ls` of the backup pool."""
        return json.loads(self.rbd("ls", "--format", "json", self.pools.backup))

    def leftovers(self, volume: str, image: str, published: Iterable[str] = ()) -> list[str]:
        """What a create of ``image`` from ``volume`` left that it should not have: snapshots of the
        volume, .part images, templates of ``image`` other than those ``published`` (its recorded
        installPaths), files in the shared filesystem backup storage other than those."""
        published = set(published)
        found = [f"{self.pools.primary}/{volume}@{snap}" for snap in self.snapshots(volume)]
        for name in self.backup_images():
            if name.endswith(".part") and image in name:
                found.append(f"{self.pools.backup}/{name}")
            elif image in name and f"ceph://{self.pools.backup}/{name}" not in published:
                found.append(f"{self.pools.backup}/{name} (not recorded)")
        found += [str(p) for p in self.shared_dir.rglob("*") if p.is_file() and image in str(p)
                  and str(p) not in published]
        return found

    def wait_no_leftovers(self, volume: str, image: str, published: Iterable[str] = (),
                          timeout_s: float = 60) -> tuple[list[str], float]:
        """(what is left when the wait ended, seconds waited)."""
        started = time.monotonic()
        while (left := self.leftovers(volume, image, published)) and time.monotonic() - started < timeout_s:
            time.sleep(0.2)
        return left, time.monotonic() - started

    def template_md5(self, install_path: str) -> str:
        """md5 of a stored template by an independent tool (`rbd export | md5sum`, `md5sum`)."""
        if install_path.startswith("ceph://"):
            pool, _, image = install_path.removeprefix("ceph://").partition("/")
            return self.export_md5(pool, image)
        out = subprocess.run(["md5sum", install_path], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]

    def hook_calls(self, job: str) -> list[dict]:
        """Bodies POSTed to the fleet's web hook for ``job``."""
        return [body for headers, body in list(self.hook.calls) if headers.get("X-Job-UUID") == job]

    def _remove_volume(self, vol: str) -> None:
        pool = self.pools.primary
        subprocess.run(["rbd", "snap", "purge", "--no-progress", f"{pool}/{vol}"], env=self.ceph.cli_env(),
                       capture_output=True)
        subprocess.run(["rbd", "rm", "--no-progress", f"{pool}/{vol}"], env=self.ceph.cli_env(), capture_output=True)


def make_fleet_pools(make_pool) -> FleetPools:
    """The pools of a session's multi-agent tests (make_pool: tests/conftest.py)."""
    return FleetPools(make_pool("zsm-ps"), make_pool("zsm-bs"), make_pool("zsm-store"))


# The fixtures of the multi-agent tests (a plugin of tests/conftest.py).
@pytest.fixture(scope="module")
def fleet_pools(make_pool):
    return make_fleet_pools(make_pool)


@pytest.fixture
def fleet(tmp_path, ceph_cluster, fleet_pools):
    """Three agents (A, B, C) sharing one RADOS store, stopped after the test."""
    site = Fleet(tmp_path, ceph_cluster, fleet_pools)
    try:
        yield site
    finally:
        site.close()
