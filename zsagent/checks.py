"""`zsagent check`: is everything the configuration names there and usable? Each finding says what
was checked and, for a problem, how to fix it; a finding that is ok but still has a fix is a warning
(printed, not counted as a problem)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
from collections.abc import Iterator

from zsagent.ceph import open_backend
from zsagent.config import Config
from zsagent.copy import md5_choice
from zsagent.filemodes import private_dir
from zsagent.storages import KINDS, Finding, Runtime
from zsagent.storages.filesystem import writable_dir


def run_checks(config: Config) -> list[Finding]:
    findings = [(True, f"configuration {config.source} parses", "")]
    findings += _data_dir(config)
    findings += _listener(config)
    findings += _sessions(config)
    runtime = Runtime(config, connect_timeout_s=min(10, config.ceph.client_mount_timeout))
    try:
        findings += list(_ceph(config, runtime))
        findings += list(_primary_file_roots(config))
        findings += list(_backup_storages(config, runtime))
    finally:
        runtime.close()
    findings += list(_qemu_img_engine(config))
    findings += list(_leftovers(config))
    findings += list(_agents(config))
    findings += list(front_upstream(config))
    findings.append(md5_finding(config.agent.data_dir))
    return list(dict.fromkeys(findings))  # a pool both primary and backup storage is said once


def front_upstream(config: Config) -> Iterator[Finding]:
    """In front mode: does ZStack's agent behind the front answer its echo (sync, empty body, no taskuuid:
    [zs] CephPrimaryStorageMonBase.java echo, KVMConstant.java l.13-16)?"""
    front = config.front
    if not front.configured:
        return
    import httpx

    path = "/ceph/primarystorage/echo" if front.fronts == "ceph" else "/host/echo"
    url = front.upstream_url + path
    try:
        answer = httpx.post(url, content=b"", timeout=5)
    except httpx.HTTPError as e:
        yield (False, f"front: ZStack's agent at {url} does not answer: {type(e).__name__}: {e}",
               "start ZStack's agent there (after a redeploy it may be back on the front's port) or correct "
               "[front] upstream_url")
        return
    if 200 <= answer.status_code < 300:
        yield (True, f"front: ZStack's agent answers its echo at {url}", "")
    else:
        yield (False, f"front: ZStack's agent at {url} answered its echo with HTTP {answer.status_code}",
               "check that [front] upstream_url names ZStack's " + front.fronts + " agent")


def _data_dir(config: Config) -> list[Finding]:
    path = config.agent.data_dir
    try:
        private_dir(path)
    except OSError:
        pass  # said below
    if writable_dir(path):
        found = [(True, f"data_dir {path} is writable", "")]
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append((True, f"data_dir {path} can be entered by other users (it holds the job records)",
                          f"chmod 700 {path}"))
        return found
    return [(False, f"data_dir {path} cannot be created or written",
             f"create it and let the agent's user write it: install -d -m 0700 {path}")]


def is_loopback(host: str) -> bool:
    """``host`` (an address or name from ``agent.listen``) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener(config: Config) -> list[Finding]:
    """HTTPS when asked for (the files readable, the key not readable by others); a warning for plain
    HTTP on an address other machines reach: sessions and access-key requests would cross the network
    in clear."""
    from zsagent.daemon import parse_listen

    agent = config.agent
    host, _ = parse_listen(agent.listen)
    if agent.tls:
        found: list[Finding] = []
        for what, path in (("tls_cert_file", agent.tls_cert_file), ("tls_key_file", agent.tls_key_file)):
            if not os.access(path, os.R_OK):
                found.append((False, f"agent.{what} {path} cannot be read",
                              "point it at a PEM file the agent's user can read"))
        if not found:
            found.append((True, f"the API is served over HTTPS on {agent.listen}", ""))
            if os.stat(agent.tls_key_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                found.append((True, f"agent.tls_key_file {agent.tls_key_file} can be read by other users",
                              f"chmod 600 {agent.tls_key_file}"))
        return found
    if is_loopback(host):
        return [(True, f"the API listens on {agent.listen} (this host only, plain HTTP)", "")]
    return [(True, f"the API listens on {agent.listen} over plain HTTP: other machines reach it, and sessions "
                   "and access-key requests cross the network unencrypted",
             "set agent.tls_cert_file and agent.tls_key_file, or listen on 127.0.0.1 behind a TLS proxy")]


def _sessions(config: Config) -> list[Finding]:
    if config.auth.zstack_url:
        return [(True, f"sessions are checked by the management node {config.auth.zstack_url}", "")]
    path = config.auth.sessions_file
    if path and os.access(path, os.R_OK):
        return [(True, f"sessions file {path} is readable", "")]
    return [(False, f"sessions file {path} cannot be read",
             "create it with one '<sessionUuid> <accountUuid>' per line, or set auth.zstack_url")]


def _ceph(config: Config, runtime: Runtime) -> Iterator[Finding]:
    """Ceph reachable, the primary storages' pools there, then each Ceph backup storage's own checks."""
    pools = [p for ps in config.primary_storage if ps.type == "ceph" for p in ps.pools]
    backups = [bs for bs in config.backup_storage if bs.type == "ceph"]
    if not pools and not backups:
        return
    try:
        runtime.ceph = open_backend(config.ceph)
        cluster = runtime.cluster
    except Exception as e:  # noqa: BLE001 - any failure to connect is the finding
        runtime.ceph = None  # the backup storages' own Ceph checks are skipped: said once here
        where = config.ceph.fake_root if config.ceph.backend == "fake" else config.ceph.conf
        what = runtime.unreachable or (f"Ceph ({config.ceph.backend}, {where}) cannot be reached: "
                                       f"{type(e).__name__}: {e}")
        yield (False, what, "check ceph.conf / ceph.keyring / ceph.client, that the monitors are up, and that "
               "`ceph -s` works with the same files")
        return
    yield (True, f"Ceph is reachable ({config.ceph.backend})", "")
    for pool in dict.fromkeys(pools):
        if cluster.pool_exists(pool):
            yield (True, f"Ceph pool {pool} exists", "")
        else:
            yield (False, f"Ceph pool {pool} does not exist",
                   f"create it: ceph osd pool create {pool} && rbd pool init {pool}")


def _primary_file_roots(config: Config) -> Iterator[Finding]:
    for ps in config.primary_storage:
        if ps.type == "filesystem":
            if os.path.isdir(ps.path):
                yield (True, f"primary storage {ps.uuid}: {ps.path} exists", "")
            else:
                yield (False, f"primary storage {ps.uuid}: {ps.path} is not a directory",
                       "mount the primary storage there, or correct its path")


def _backup_storages(config: Config, runtime: Runtime) -> Iterator[Finding]:
    for bs in config.backup_storage:
        if bs.type == "ceph" and runtime.ceph is None:
            continue  # Ceph could not be reached: said once in _ceph
        yield from KINDS[bs.type].check(bs, runtime)


def _leftovers(config: Config) -> Iterator[Finding]:
    """Which store the agent uses and what failed or interrupted jobs left that the agent could not remove
    yet (it keeps retrying)."""
    from zsagent.cluster.agents import agent_id
    from zsagent.errors import ZsError
    from zsagent.store import open_store
    from zsagent.store.open import DB_FILE

    if config.store.backend == "sqlite" and not os.path.exists(os.path.join(config.agent.data_dir, DB_FILE)):
        return
    try:
        store = open_store(config, agent_id(config))
    except ZsError as e:
        yield (False, f"store: {e.error.details}", "create the pool or correct [store] pool / [ceph]")
        return
    try:
        where = store.describe()
        artifacts = store.artifacts()
    except ZsError as e:
        yield (False, f"store: {e.error.details}", "bring the OSDs back or make room in the pool")
        return
    finally:
        store.close()
    if where["backend"] == "rados":
        yield (True, f"store: RADOS pool {where['pool']}, namespace {where['namespace']} (shared by the agents "
                     "of this cluster)", "")
    else:
        yield (True, f"store: SQLite {where['path']} (this host only)", "")
    failed = [a for a in artifacts if a.attempts]
    if not failed:
        yield (True, "no leftovers of failed jobs wait to be removed", "")
    for a in failed:
        where = ", ".join(f"{k}={v}" for k, v in sorted(a.spec.items()) if k in ("pool", "image", "snapshot", "path"))
        yield (False, f"job {a.job_uuid} left {a.kind} {where}: {a.attempts} removals failed, last: {a.last_error}",
               "the running agent retries it with backoff; fix the cause (e.g. bring the OSD or SFTP server "
               "back) and it goes away")


def _agents(config: Config) -> Iterator[Finding]:
    """With the RADOS store: every agent registered there with the age of its lease (zsagent.cluster.agents);
    one whose lease ran out is taken over by a live agent. (A store that cannot be opened is said by
    _leftovers.)"""
    if config.store.backend != "rados":
        return
    from zsagent.cluster.agents import agent_id, registered_agents
    from zsagent.store import open_store

    me = agent_id(config)
    try:
        store = open_store(config, me)
    except Exception:  # noqa: BLE001 - said once, by _leftovers
        return
    try:
        entries = registered_agents(store.ioctx, store.rados)
    except store.rados.Error as e:
        yield (False, f"the agents' registry in the store cannot be read: {type(e).__name__}: {e}",
               "bring the OSDs back; check [store] pool")
        return
    finally:
        store.close()
    lease_s = config.cluster.lease_s
    if not entries:
        yield (True, "no agent is registered in the store yet (an agent registers when it starts)", "")
    for entry in entries:
        age_s = entry.lease_age_s()
        name = f"agent {entry.agent_id}{' (this one)' if entry.agent_id == me else ''} on {entry.host}, " \
               f"API {entry.listen}, pid {entry.pid}"
        if age_s < lease_s:
            yield (True, f"{name}: alive, lease renewed {age_s:.1f} s ago", "")
        else:
            yield (True, f"{name}: its lease ran out {age_s - lease_s:.0f} s ago (renewed {age_s:.0f} s ago)",
                   "a live agent takes over its jobs and leftovers within a lease; if none runs, start one")


def md5_finding(data_dir: str | None) -> Finding:
    """The MD5 figures on this CPU and what the agent uses, e.g. ``MD5: hashlib 688 MiB/s, native(avx512)
    519 MiB/s — using hashlib``: from the data dir's cache, else measured now (even under ZSAGENT_MD5)."""
    choice = md5_choice.evaluate(data_dir, measure_when_forced=True)
    return (True, choice.summary(), "")


def _qemu_img_engine(config: Config) -> Iterator[Finding]:
    """Storages whose templates qemu-img makes need qemu-img, and for SFTP a writable spool."""
    users = [bs for bs in config.backup_storage if getattr(bs.settings, "uses_qemu_img", False)]
    if not users:
        return
    if shutil.which("qemu-img"):
        yield (True, "qemu-img is installed (compressed / qemu-img engine templates)", "")
    else:
        yield (False, "qemu-img is not installed, but backup storages "
               + ", ".join(bs.uuid for bs in users) + " need it", "apt-get install qemu-utils")
    if any(bs.type == "sftp" for bs in users):
        spool = config.agent.spool_path
        if writable_dir(spool, create=True):
            yield (True, f"spool_dir {spool} is writable", "")
        else:
            yield (False, f"spool_dir {spool} cannot be created or written",
                   f"create it on a disk with room for the largest template: install -d -m 0750 {spool}")
