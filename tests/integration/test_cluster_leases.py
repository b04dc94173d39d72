"""Agents on one Ceph cluster (zsagent.cluster), on the real test cluster: the per-volume lock serializes
agents and outlives a dead holder only by its lease; an agent's liveness lease keeps reapers off, and when
it is not renewed exactly one of several racing agents takes the stopped agent over: its job failed once
(one web hook), its RBD snapshot and .part image removed (checked with the rbd tool), the agent
deregistered. Leases of 2 s keep it fast."""

from __future__ import annotations

import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from zsagent import errors
from zsagent.ceph import CephBackend, CephConfig, open_backend
from zsagent.cluster.agents import AgentLease, liveness_object, registered_agents
from zsagent.cluster.takeover import Takeover
from zsagent.cluster.volume_lock import HOLDER_XATTR, VOLUME_LOCK, VolumeLock, lock_object
from zsagent.config import Config
from zsagent.errors import ZsError
from zsagent.janitor import Janitor
from zsagent.jobs import post_webhook
from zsagent.storages import Runtime
from zsagent.store import SqliteStore
from zsagent.store.rados import RadosStore

LEASE_S = 2
SETTLE_S = 30.0  # generous bound for things that happen "about a lease later" on a loaded machine


@dataclass
class Backend:
    """The rados module in use (real, or zsagent.ceph.fake's), how to connect a new client, the pool."""

    ceph: CephBackend
    pool: str

    @property
    def rados(self):
        return self.ceph.rados


@pytest.fixture(scope="module")
def real_backend(ceph_cluster, make_pool) -> Backend:
    config = CephConfig(backend="rados", conf=ceph_cluster.conf, keyring=ceph_cluster.keyring)
    return Backend(open_backend(config), make_pool("zst-cl"))


@pytest.fixture(scope="module")
def fake_backend(tmp_path_factory) -> Backend:
    config = CephConfig(backend="fake", fake_root=str(tmp_path_factory.mktemp("fake-ceph")))
    backend = Backend(open_backend(config), "zst-cl")
    handle = backend.ceph.connect()
    handle.create_pool(backend.pool)
    handle.shutdown()
    return backend


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.ceph)])
def backend(request) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


REAL_AND_SLOW_FAKE = [pytest.param("fake", marks=pytest.mark.reliability), pytest.param("real", marks=pytest.mark.ceph)]
"""For the tests that wait out several leases: on the fake too only in `make reliability` (the contract
suite, tests/contract/test_rados_locks.py, pins the fake's locks to the real ones)."""


@pytest.fixture
def namespace():
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
def connect(backend):
    """connect() -> a new connected cluster handle (a client of its own: one per simulated agent)."""
    handles = []

    def make():
        handle = backend.ceph.connect(timeout_s=30)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.shutdown()


@pytest.fixture
def ioctx_of(connect, backend, namespace):
    def make():
        ioctx = connect().open_ioctx(backend.pool)
        ioctx.set_namespace(namespace)
        return ioctx

    return make


@pytest.fixture
def rados(backend):
    return backend.rados


# -- the per-volume lock ------------------------------------------------------------------------------


def test_two_agents_copies_of_one_volume_run_one_after_the_other(rados, ioctx_of):
    volume = secrets.token_hex(16)
    a = VolumeLock(ioctx_of(), rados, "agent-a", LEASE_S)
    b = VolumeLock(ioctx_of(), rados, "agent-b", LEASE_S)
    events, waited_for = [], []
    a_inside = threading.Event()

    def copy_on_a():
        with a.hold(volume):
            events.append("a starts")
            a_inside.set()
            time.sleep(1.5 * LEASE_S)  # longer than the lease: only the renewal keeps b out
            events.append("a ends")

    thread = threading.Thread(target=copy_on_a)
    thread.start()
    assert a_inside.wait(SETTLE_S)
    with b.hold(volume, on_wait=waited_for.append):
        events.append("b starts")
    thread.join()
    assert events == ["a starts", "a ends", "b starts"]
    assert waited_for == ["agent-a"]  # what its job's progress shows as waitingFor


def test_a_dead_holders_lock_runs_out_and_another_agent_takes_it(rados, ioctx_of):
    volume = secrets.token_hex(16)
    dead = ioctx_of()
    dead.lock_exclusive(lock_object(volume), VOLUME_LOCK, "dead", desc="agent-dead", duration=LEASE_S)
    dead.set_xattr(lock_object(volume), HOLDER_XATTR, b"agent-dead")  # and then it is killed: no renewal
    b = VolumeLock(ioctx_of(), rados, "agent-b", LEASE_S, wait_s=SETTLE_S)
    waited_for = []
    with b.hold(volume, on_wait=waited_for.append):
        assert b.holder(volume) == "agent-b"
    assert waited_for == ["agent-dead"]


def test_a_waiter_gives_up_after_volume_lock_wait_s_with_zstacks_timeout(rados, ioctx_of):
    volume = secrets.token_hex(16)
    a = VolumeLock(ioctx_of(), rados, "agent-a", LEASE_S)
    b = VolumeLock(ioctx_of(), rados, "agent-b", LEASE_S, wait_s=1)
    cancel = threading.Event()
    with a.hold(volume):
        with pytest.raises(ZsError) as waited, b.hold(volume):
            pass
        assert waited.value.error.code == errors.TIMEOUT
        assert "agent-a" in waited.value.error.details
        cancel.set()
        with pytest.raises(ZsError) as cancelled, b.hold(volume, cancel, lambda: "cancelled by request"):
            pass
        assert cancelled.value.error.code == errors.CANCELLED


def test_an_agent_without_its_liveness_lease_takes_no_copy(rados, ioctx_of):
    lock = VolumeLock(ioctx_of(), rados, "agent-a", LEASE_S, alive=lambda: False)
    with pytest.raises(ZsError) as refused, lock.hold(secrets.token_hex(16)):
        pass
    assert refused.value.error.code == errors.OPERATION_FAILURE
    assert "liveness lease" in refused.value.error.details


# -- liveness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", REAL_AND_SLOW_FAKE, indirect=True)
def test_a_renewed_lease_keeps_racing_reapers_off(rados, ioctx_of, store_of):
    alive = AgentLease(ioctx_of(), rados, "alive:1", LEASE_S, "127.0.0.1:1")
    alive.acquire(SETTLE_S)
    alive.start()
    try:
        reapers = [_reaper(store_of, rados, f"reaper:{i}") for i in range(3)]
        deadline = time.monotonic() + 2 * LEASE_S
        while time.monotonic() < deadline:
            for reaper in reapers:
                reaper.run_once()
            time.sleep(0.2)
        assert [e.agent_id for e in registered_agents(ioctx_of(), rados)] == ["alive:1"]
        assert alive.held
    finally:
        alive.release()
    assert registered_agents(ioctx_of(), rados) == []  # a clean stop leaves nothing to take over


class _CutOff:
    """An ioctx whose calls fail as when the host is cut off from Ceph, once ``cut`` is set."""

    def __init__(self, ioctx, rados) -> None:
        self._ioctx = ioctx
        self._rados = rados
        self.cut = threading.Event()

    def __getattr__(self, name):
        call = getattr(self._ioctx, name)

        def guarded(*args, **kwargs):
            if self.cut.is_set():
                raise self._rados.TimedOut("injected: no OSD answers")
            return call(*args, **kwargs)

        return guarded


@pytest.mark.parametrize("backend", REAL_AND_SLOW_FAKE, indirect=True)
def test_an_agent_that_cannot_renew_for_longer_than_its_lease_is_told_so(rados, ioctx_of):
    lost = []
    told = threading.Event()
    ioctx = _CutOff(ioctx_of(), rados)
    lease = AgentLease(ioctx, rados, "cut-off:1", LEASE_S, "127.0.0.1:1",
                       on_lost=lambda reason: (lost.append(reason), told.set()))
    lease.acquire(SETTLE_S)
    lease.start()
    try:
        ioctx.cut.set()  # every renewal fails from now on
        assert told.wait(SETTLE_S)
        assert not lease.held
        assert "not renewed" in lost[0] and "no OSD answers" in lost[0]
        ioctx.cut.clear()  # back: the agent holds its lease again (a reaper could not take it: none ran)
        deadline = time.monotonic() + SETTLE_S
        while not lease.held and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lease.held
    finally:
        lease.release()


# -- takeover ---------------------------------------------------------------------------------------


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.headers["X-Job-UUID"], self.headers["X-Job-Success"], body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hooks.received
    server.shutdown()


@pytest.fixture
def store_of(connect, backend, namespace, tmp_path):
    """store_of(owner) -> a RadosStore of that agent, on a client of its own, in the test's namespace."""
    def make(owner: str) -> RadosStore:
        local = SqliteStore(tmp_path / f"{owner.replace(':', '_')}.db", owner)
        return RadosStore(connect(), backend.rados, backend.pool, namespace, owner, local, close_cluster=False)

    return make


HOLDS_IMAGE_OPEN = """
import json, sys, time
import rados, rbd
cluster = rados.Rados(**json.loads(sys.argv[1]))
cluster.connect()
image = rbd.Image(cluster.open_ioctx(sys.argv[2]), sys.argv[3])
print(cluster.get_addrs(), flush=True)
time.sleep(600)
"""
"""A copy's writer: holds the image open (a watch Ceph keeps until it times out, 30 s, after a kill)."""


def _reaper(store_of, rados, agent: str, config: Config | None = None) -> Takeover:
    store = store_of(agent)
    runtime = Runtime(config or Config(), open_backend(config.ceph) if config else None)
    janitor = Janitor(store, runtime, active=set, first_backoff_s=0.2, max_backoff_s=1)
    hook = lambda url, job_uuid, body: post_webhook(url, job_uuid, False, body, 3, 0.2)  # noqa: E731
    return Takeover(store.ioctx, rados, agent, LEASE_S, store, janitor, hook)


@pytest.mark.parametrize("backend", ["real"], indirect=True)  # the rbd tool checks what is left
def test_a_stopped_agent_is_taken_over_exactly_once(rados, ioctx_of, store_of, ceph_cluster, backend, webhook):
    pool = backend.pool
    url, hooks = webhook
    volume, image = secrets.token_hex(16), secrets.token_hex(16)
    ceph_cluster.rbd_cli("create", "--size", "4M", f"{pool}/{volume}")
    ceph_cluster.rbd_cli("snap", "create", f"{pool}/{volume}@{image}")
    ceph_cluster.rbd_cli("create", "--size", "4M", f"{pool}/{image}.part")

    # agent "dead:1" registers, starts a copy (journalled as the copy does: snapshot, then the .part,
    # which its Ceph client has open: a watch on it), and is killed -9: its lease is never renewed
    writer = subprocess.Popen([sys.executable, "-c", HOLDS_IMAGE_OPEN, json.dumps(ceph_cluster.rados_kwargs()), pool,
                               f"{image}.part"], stdout=subprocess.PIPE, text=True)
    try:
        writer_address = writer.stdout.readline().strip()
        assert writer_address, "the writer did not start"
    finally:
        writer.kill()
        writer.wait()
    dead_lease = AgentLease(ioctx_of(), rados, "dead:1", LEASE_S, "127.0.0.1:7001",
                            ceph_clients=lambda: (writer_address,))
    dead_lease.acquire(SETTLE_S)
    dead = store_of("dead:1")
    job = secrets.token_hex(16)
    dead.add_job(job, volume, webhook=url)
    dead.set_job_state(job, "running")
    dead.journal(job, "ceph-snapshot", {"pool": pool, "image": volume, "snapshot": image}, volume, image)
    dead.journal(job, "ceph", {"pool": pool, "image": f"{image}.part"}, volume, image)

    config = Config(ceph=CephConfig(backend="rados", conf=ceph_cluster.conf, keyring=ceph_cluster.keyring))
    reapers = [_reaper(store_of, rados, f"live:{i}", config) for i in range(3)]
    failed: list[list[str]] = [[] for _ in reapers]
    start = threading.Barrier(len(reapers))

    def race(i):
        start.wait()
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and any(e.agent_id == "dead:1"
                                                  for e in registered_agents(reapers[i].ioctx, rados)):
            failed[i] += reapers[i].run_once()
            time.sleep(0.1)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(reapers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(f) for f in failed) == [0, 0, 1]  # exactly one agent failed the job
    record = dead.get_job(job)
    assert record.state == "failed"
    assert record.result["error"]["code"] == errors.OPERATION_FAILURE
    assert "stopped during copy" in record.result["error"]["details"]
    deadline = time.monotonic() + 10
    while not hooks and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a second hook, if there were one, would have come by now
    assert [(h[0], h[1]) for h in hooks] == [(job, "false")]
    assert "stopped during copy" in hooks[0][2]["error"]["details"]
    assert ceph_cluster.rbd_cli("snap", "ls", f"{pool}/{volume}").strip() == b""
    assert f"{image}.part" not in ceph_cluster.rbd_cli("ls", pool).decode().split()
    assert dead.artifacts(owner="dead:1") == []
    assert [e.agent_id for e in registered_agents(ioctx_of(), rados)] == []
    blocklist = ceph_cluster.ceph_cli("osd", "blocklist", "ls", "--format", "json").decode()
    assert writer_address.split(",")[-1].rstrip("]").split(":", 1)[-1] in blocklist  # fenced: its watch dropped

    # the stopped agent starts again: its lease is free, its job is over, nothing is left for it to do
    again = AgentLease(ioctx_of(), rados, "dead:1", LEASE_S, "127.0.0.1:7001")
    again.acquire(SETTLE_S)
    try:
        assert not dead.fail_job_if_unfinished(job, {"error": {}}, 503)
        assert dead.unfinished_jobs(owner="dead:1") == []
    finally:
        again.release()
    ioctx_of().lock_exclusive(liveness_object("dead:1"), "zsagent-alive", "probe", duration=LEASE_S)


# -- two agents built from their configuration -------------------------------------------------------

ACCOUNT = "36c27e8ff05c4780bf6d2fa65700f22e"


def _agent_config(backend: Backend, namespace: str, tmp_path, name: str, bs_root) -> dict:
    ceph = {"backend": backend.ceph.config.backend, "conf": backend.ceph.config.conf,
            "keyring": backend.ceph.config.keyring, "fake_root": backend.ceph.config.fake_root}
    return {"agent": {"data_dir": str(tmp_path / name), "listen": "127.0.0.1:1"},
            "auth": {"sessions_file": str(tmp_path / "sessions"), "unknown_volume_owner": "allow"},
            "ceph": {k: v for k, v in ceph.items() if v is not None},
            "store": {"backend": "rados", "pool": backend.pool, "namespace": namespace},
            "cluster": {"agent_id": name, "lease_s": LEASE_S},
            "primary_storage": [{"uuid": "0" * 31 + "1", "type": "ceph", "pools": [backend.pool]}],
            "backup_storage": [{"uuid": "0" * 31 + "2", "type": "filesystem", "path": str(bs_root), "format": "raw",
                                "default": True}]}


@pytest.mark.parametrize("backend", REAL_AND_SLOW_FAKE, indirect=True)
def test_a_request_on_one_agent_waits_for_the_other_agents_copy_of_the_volume(backend, namespace, tmp_path):
    from support import md5_bytes, md5sum_file

    from zsagent.agent import build_agent
    from zsagent.checks import run_checks
    from zsagent.config import parse_config
    from zsagent.jobs import Job
    from zsagent.request import parse_body

    (tmp_path / "sessions").write_text("")
    bs_root = tmp_path / "bs"
    bs_root.mkdir()
    volume = secrets.token_hex(16)
    data = secrets.token_bytes(1024 * 1024)
    handle = backend.ceph.connect(timeout_s=30)
    try:
        with handle.open_ioctx(backend.pool) as ioctx:
            backend.ceph.rbd.RBD().create(ioctx, volume, len(data))
            with backend.ceph.rbd.Image(ioctx, volume) as image:
                image.write(data, 0)
    finally:
        handle.shutdown()
    configs = {name: parse_config(_agent_config(backend, namespace, tmp_path, name, bs_root))
               for name in ("a:1", "b:1")}
    a, b = (build_agent(configs[name]) for name in ("a:1", "b:1"))
    try:
        said = [what for _, what, _ in run_checks(configs["b:1"]) if what.startswith("agent ")]
        assert any(line.startswith("agent a:1 on ") and "alive" in line for line in said), said
        assert any(line.startswith("agent b:1 (this one)") for line in said), said

        copying_on_a = threading.Event()
        done_on_a = threading.Event()

        def copy_on_a():  # agent a holds the volume (as its copy does) for longer than a lease
            with a.service.admission.volume(volume):
                copying_on_a.set()
                done_on_a.wait(SETTLE_S)

        holder = threading.Thread(target=copy_on_a)
        holder.start()
        assert copying_on_a.wait(SETTLE_S)
        image = uuid.uuid4().hex
        request = parse_body({"params": {"name": "t", "resourceUuid": image}}, volume)
        job = b.jobs.submit(Job(), lambda j: {"inventory": b.service.create_template(request, ACCOUNT, j)},
                            volume_uuid=volume)
        deadline = time.monotonic() + SETTLE_S
        while job.progress_json().get("waitingFor") != "a:1" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5 * LEASE_S)
        progress = job.progress_json()
        assert progress["phase"] == "queued" and progress["waitingFor"] == "a:1", progress
        done_on_a.set()
        holder.join()
        assert job.done.wait(SETTLE_S)
        assert job.success, job.body
        inventory = job.body["inventory"]
        assert inventory["md5Sum"] == md5_bytes(data)
        path = inventory["backupStorageRefs"][0]["installPath"]
        assert md5sum_file(path.removeprefix("file://")) == md5_bytes(data)
        assert a.service.get_image(image)["md5Sum"] == inventory["md5Sum"]  # one store: a knows it too
    finally:
        b.close()
        a.close()
    ioctx = backend.ceph.connect(timeout_s=30)
    try:
        with ioctx.open_ioctx(backend.pool) as io:
            io.set_namespace(namespace)
            assert registered_agents(io, backend.rados) == []  # both stopped cleanly
    finally:
        ioctx.shutdown()


@pytest.mark.parametrize("backend", REAL_AND_SLOW_FAKE, indirect=True)
def test_an_agent_cut_off_from_ceph_stops_its_copies_and_takes_none_until_it_is_back(backend, namespace, tmp_path):
    from zsagent.agent import build_agent
    from zsagent.config import parse_config
    from zsagent.jobs import Job

    (tmp_path / "sessions").write_text("")
    bs_root = tmp_path / "bs"
    bs_root.mkdir()
    agent = build_agent(parse_config(_agent_config(backend, namespace, tmp_path, "a:1", bs_root)))
    try:
        lease = agent.member.lease
        cut = _CutOff(lease.ioctx, backend.rados)
        lease.ioctx = cut
        volume = secrets.token_hex(16)

        def copy(job: Job) -> dict:  # a copy that runs until it is cancelled
            with agent.service.admission.volume(volume, job.cancel):
                job.set_state("running")
                job.cancel.wait(SETTLE_S)
                raise ZsError(errors.CANCELLED, f"cancelled: {job.cancel_reason}")

        job = agent.jobs.submit(Job(), copy, volume_uuid=volume)
        cut.cut.set()
        assert job.done.wait(SETTLE_S)
        assert "lost its liveness lease" in job.body["error"]["details"]
        with pytest.raises(ZsError) as refused, agent.service.admission.volume(secrets.token_hex(16)):
            pass
        assert "liveness lease" in refused.value.error.details
        cut.cut.clear()  # Ceph is back: it holds its lease again and copies again
        deadline = time.monotonic() + SETTLE_S
        while not lease.held and time.monotonic() < deadline:
            time.sleep(0.1)
        with agent.service.admission.volume(volume):
            assert lease.held
    finally:
        agent.close()
