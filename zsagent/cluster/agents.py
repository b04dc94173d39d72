"""Agent identity and liveness on the shared cluster.

Each agent with the RADOS store holds a liveness lock, a RADOS (cls_lock) exclusive lock named
``ALIVE_LOCK`` on the object ``agent.<id>``, taken with a duration of ``lease_s`` and renewed every
``lease_s/3`` (zsagent.cluster.renewal). The OSD ends the lock by itself when the agent stops renewing
(killed, host down, cut off from Ceph): then another agent's ``lock_exclusive`` on it succeeds, which is
how a dead agent is told from a live one (zsagent.cluster.takeover), by the OSD's clock alone.

The registry, the omap of the object ``AGENTS_OBJECT`` (key: agent id, value: an ``AgentEntry`` as
JSON), lists the agents for the takeover and for `zsagent check`; each renewal rewrites the entry's
``renewed_epoch``.

An agent that could not renew for longer than its lease must assume another agent is taking over its
jobs: ``on_lost`` stops its copies (zsagent.agent), and new copies are refused until it holds its
lease again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from zsagent.cluster.renewal import LeaseLost, Renewer

log = logging.getLogger(__name__)

AGENTS_OBJECT = "agents"
ALIVE_LOCK = "zsagent-alive"
RENEWALS_PER_LEASE = 3
"""Renewals per lease: one or two may fail (an OSD restarting) before the lease runs out."""
ACQUIRE_POLL_S = 0.5


def liveness_object(agent_id: str) -> str:
    return f"agent.{agent_id}"


def agent_id(config) -> str:
    """This agent's id: ``[cluster] agent_id``, else "<hostname>:<port of agent.listen>" (``config``: a
    zsagent.config.Config)."""
    if config.cluster.agent_id:
        return config.cluster.agent_id
    return f"{socket.gethostname()}:{config.agent.listen.rpartition(':')[2]}"


def client_addresses(*handles) -> tuple[str, ...]:
    """The addresses of the connected cluster handles among ``handles`` (None: not connected)."""
    found = []
    for handle in handles:
        try:
            found.append(handle.get_addrs())
        except Exception:  # noqa: BLE001 - not connected, or the fake backend: nothing to fence then
            continue
    return tuple(a for a in found if a)


def new_cookie() -> str:
    """A lock cookie of this process: a lock is held by (client instance, cookie)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class AgentEntry:
    """An agent in the registry: host (its hostname), listen (its API's "host:port"), pid, started_epoch
    and renewed_epoch (seconds since 1970, its own clock: when it started and last renewed its lease),
    ceph_clients: the addresses of its Ceph client connections (``Rados.get_addrs()``), which a takeover
    blocklists so that Ceph drops the stopped agent's watches at once (zsagent.ceph.fencing)."""

    agent_id: str
    host: str
    listen: str
    pid: int
    started_epoch: float
    renewed_epoch: float
    ceph_clients: tuple[str, ...] = ()

    def lease_age_s(self, now_epoch: float | None = None) -> float:
        """Seconds since the last renewal (clocks of two hosts: as good as their NTP)."""
        return (time.time() if now_epoch is None else now_epoch) - self.renewed_epoch

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, agent: str, raw: bytes) -> AgentEntry:
        data: dict[str, Any] = json.loads(raw)
        return cls(agent, str(data.get("host", "")), str(data.get("listen", "")), int(data.get("pid", 0)),
                   float(data.get("started_epoch", 0)), float(data.get("renewed_epoch", 0)),
                   tuple(str(a) for a in data.get("ceph_clients", ())))


def registered_agents(ioctx, rados) -> list[AgentEntry]:
    """Every agent in the registry, by id ([] when no agent registered yet)."""
    entries, after = [], ""
    while True:
        op = ioctx.create_read_op()
        try:
            values, _ = ioctx.get_omap_vals(op, after, "", 512)
            try:
                ioctx.operate_read_op(op, AGENTS_OBJECT)
            except rados.ObjectNotFound:
                return entries
            batch = list(values)
        finally:
            ioctx.release_read_op(op)
        for key, raw in batch:
            try:
                entries.append(AgentEntry.from_json(key, raw))
            except (ValueError, TypeError):
                log.warning("agent registry: entry %r is not readable, ignored", key)
        if len(batch) < 512:
            return entries
        after = batch[-1][0]


def register(ioctx, entry: AgentEntry) -> None:
    op = ioctx.create_write_op()
    try:
        ioctx.set_omap(op, (entry.agent_id,), (entry.to_json(),))
        ioctx.operate_write_op(op, AGENTS_OBJECT)
    finally:
        ioctx.release_write_op(op)


def deregister(ioctx, agent: str) -> None:
    op = ioctx.create_write_op()
    try:
        ioctx.remove_omap_keys(op, (agent,))
        ioctx.operate_write_op(op, AGENTS_OBJECT)
    finally:
        ioctx.release_write_op(op)


class AgentLease:
    """This agent's liveness lease. ``acquire`` takes it (waiting while a previous run's lease still
    lasts or another agent reaps that run), ``start`` renews it in the background, ``release`` gives it
    up and leaves the registry (a clean stop: nothing to take over). ``on_lost(reason)``: called when it
    could not be renewed for longer than ``lease_s``; the lease is then taken again as soon as it can.
    ``ceph_clients()``: this process' Ceph client addresses now, for the registry."""

    def __init__(self, ioctx, rados, agent: str, lease_s: float, listen: str, on_lost=None,
                 on_regained=None, ceph_clients=lambda: ()) -> None:
        self.ioctx = ioctx
        self.rados = rados
        self.agent_id = agent
        self.lease_s = lease_s
        self.cookie = new_cookie()
        self.entry = AgentEntry(agent, socket.gethostname(), listen, os.getpid(), time.time(), time.time())
        self.on_lost = on_lost
        self.on_regained = on_regained
        self.ceph_clients = ceph_clients
        self._renewer: Renewer | None = None
        self._released = False

    @property
    def interval_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    @property
    def held(self) -> bool:
        return self._renewer is not None and self._renewer.held

    def _lock(self, renew: bool) -> None:
        self.ioctx.lock_exclusive(liveness_object(self.agent_id), ALIVE_LOCK, self.cookie,
                                  desc=self.agent_id, duration=int(self.lease_s + 0.999), flags=1 if renew else 0)

    def try_acquire(self) -> bool:
        """One attempt; True when this process now holds the lease (and is registered)."""
        try:
            self._lock(renew=False)
        except self.rados.ObjectBusy:
            return False  # a previous run's lease still lasts, or a reaper holds it
        except self.rados.ObjectExists:
            pass  # held by this process already
        self._register()
        return True

    def acquire(self, wait_s: float) -> None:
        """Take the lease, waiting up to ``wait_s``; RuntimeError naming the id when it stays taken."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the agent id {self.agent_id!r} is in use: its liveness lock in Ceph stayed taken "
                                   f"for {wait_s:g} s (another agent runs with the same [cluster] agent_id, or a "
                                   "stopped run of this one is being taken over)")
            time.sleep(ACQUIRE_POLL_S)

    def _register(self) -> None:
        self.entry = AgentEntry(self.agent_id, self.entry.host, self.entry.listen, self.entry.pid,
                                self.entry.started_epoch, time.time(), tuple(self.ceph_clients()))
        register(self.ioctx, self.entry)

    def _renew(self) -> None:
        try:
            self._lock(renew=True)
        except self.rados.ObjectBusy as e:
            raise LeaseLost("another client holds this agent's liveness lock (it took over)") from e
        self._register()

    def start(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()  # a lost one (its thread is the caller then: not joined)
        self._renewer = Renewer(f"lease-{self.agent_id}", self._renew, self.interval_s, self.lease_s,
                                self._lost).start()

    def _lost(self, reason: str) -> None:
        if self._released:
            return
        if self.on_lost is not None:
            self.on_lost(reason)
        while not self._released:  # take it again once the reaper is done: the agent serves on
            try:
                if self.try_acquire():
                    log.warning("agent %s: liveness lease held again", self.agent_id)
                    if self.on_regained is not None:
                        self.on_regained()
                    self.start()
                    return
            except Exception as e:  # noqa: BLE001 - Ceph still unreachable
                log.debug("agent %s: lease not taken again yet: %s", self.agent_id, e)
            time.sleep(max(ACQUIRE_POLL_S, self.interval_s))

    def release(self) -> None:
        """Stop renewing, leave the registry and unlock (a clean stop left nothing to take over)."""
        self._released = True
        if self._renewer is not None:
            self._renewer.stop()
        try:
            deregister(self.ioctx, self.agent_id)
            self.ioctx.unlock(liveness_object(self.agent_id), ALIVE_LOCK, self.cookie)
        except Exception as e:  # noqa: BLE001 - the lease then runs out by itself
            log.warning("agent %s: could not release the liveness lease (it runs out in %g s): %s", self.agent_id,
                        self.lease_s, e)
