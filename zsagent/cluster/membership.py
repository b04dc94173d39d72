"""Joins an agent to the others on its cluster when its store is shared (the RADOS store, whose
``ioctx`` these objects live in): its liveness lease, the per-volume lock in its admission, owner-only
cleanup and the end of its jobs recorded once, and the takeover of stopped agents."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from zsagent.cluster.agents import AgentLease, client_addresses
from zsagent.cluster.takeover import Takeover
from zsagent.cluster.volume_lock import VolumeLock
from zsagent.jobs import post_webhook

log = logging.getLogger(__name__)

ACQUIRE_MARGIN_S = 30.0
"""Beyond two leases (the previous run's, then a reaper's), how long a start waits for its lease: a
reaper renews the lock while removals take their time (Ceph may hold a dead watch for 30 s)."""


@dataclass
class Membership:
    lease: AgentLease
    takeover: Takeover

    def close(self) -> None:
        self.takeover.stop()
        self.lease.release()


def join(config, agent: str, store, service, jobs) -> Membership | None:
    """Join when ``store`` is shared (has an ``ioctx``), else None (SQLite: one agent, nothing changes).
    Blocks until this agent holds its liveness lease (at most two leases and ACQUIRE_MARGIN_S), before
    it fails its own interrupted jobs, so that no reaper works on them at the same time unseen."""
    ioctx = getattr(store, "ioctx", None)
    if ioctx is None:
        return None
    rados = store.rados  # the real module or zsagent.ceph.fake's, as the store uses
    cluster = config.cluster

    def lost(reason: str) -> None:  # another agent may take over now: stop copying rather than race it
        running = jobs.running()
        log.error("agent %s lost its liveness lease (%s); cancelling %d copies", agent, reason, len(running))
        for job in running:
            jobs.cancel(job.uuid, f"this agent lost its liveness lease in Ceph ({reason}); another agent may "
                                  "take over its jobs")

    lease = AgentLease(ioctx, rados, agent, cluster.lease_s, config.agent.listen, on_lost=lost,
                       ceph_clients=lambda: client_addresses(store.cluster, service.runtime.connected))
    lease.acquire(2 * cluster.lease_s + ACQUIRE_MARGIN_S)
    lease.start()
    jobs.end_once = True
    service.admission.cluster_lock = VolumeLock(ioctx, rados, agent, cluster.lease_s, cluster.volume_lock_wait_s,
                                                alive=lambda: lease.held)

    def post_hook(url: str, job_uuid: str, body: dict) -> None:
        threading.Thread(target=post_webhook, name=f"webhook-{job_uuid[:8]}", daemon=True,
                         args=(url, job_uuid, False, body, jobs.webhook_attempts, jobs.webhook_backoff_s)).start()

    takeover = Takeover(ioctx, rados, agent, cluster.lease_s, store, service.janitor, post_hook)
    takeover.start()
    log.info("agent %s joined the agents sharing its store (lease %g s)", agent, cluster.lease_s)
    return Membership(lease, takeover)
