"""A stopped agent's jobs and leftovers, reconciled by a live one, exactly once.

Every ``lease_s/2`` each live agent looks at the registry (zsagent.cluster.agents). For another agent
whose liveness lock it can take, the lease ran out on the OSD: that agent stopped. Taking its lock
makes this agent the reaper (a lock has one holder; the others' attempts fail), which then, holding
and renewing it:

1. fails the stopped agent's unfinished jobs, each through ``store.fail_job_if_unfinished`` ("agent
   <host> stopped during copy", SYS.1006 like zsagent.service.INTERRUPTED), and POSTs the web hook of
   each job whose compare-and-set it won: one hook per job, even when the restarted agent races it;
2. blocklists the stopped agent's Ceph clients (their addresses are in its registry entry) when it left
   anything in Ceph, so that Ceph drops its watches on the images it had open at once instead of after
   ``osd_client_watch_timeout`` (zsagent.ceph.fencing; this also fences an agent that is only cut off:
   it can write nothing more), then removes that agent's leftovers that any host can remove
   (``CLUSTER_WIDE_KINDS``: RBD images and snapshots, SFTP files, and what ZStack owns), through the
   janitor (its removal, attempt count and backoff); what cannot be removed yet stays journalled and the
   next pass, of any agent, tries again;
3. when none of those is left, removes the agent from the registry, then unlocks.

Host-local leftovers (spool files, qemu-nbd temporary directories, libvirt changes, files on a
filesystem backup storage, which may not be a shared mount) stay for their own host: the agent removes
them when it starts again (its janitor handles its own artifacts, whoever failed their jobs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from zsagent import errors
from zsagent.ceph import fencing
from zsagent.cleanup import LEGACY_KINDS, MANAGED_KIND
from zsagent.cluster.agents import (
    ALIVE_LOCK,
    RENEWALS_PER_LEASE,
    AgentEntry,
    deregister,
    liveness_object,
    new_cookie,
    registered_agents,
)
from zsagent.cluster.renewal import LeaseLost, Renewer
from zsagent.errors import ErrorCode

log = logging.getLogger(__name__)

CEPH_KINDS = frozenset({"ceph", "ceph-snapshot"})
CLUSTER_WIDE_KINDS = CEPH_KINDS | {"sftp", MANAGED_KIND}
"""Artifact kinds any agent can remove (they live in Ceph or on the one SFTP server)."""


def cluster_wide(kind: str) -> bool:
    return LEGACY_KINDS.get(kind, kind) in CLUSTER_WIDE_KINDS


def stopped_error(entry: AgentEntry) -> ErrorCode:
    return ErrorCode(errors.OPERATION_FAILURE, f"agent {entry.host or entry.agent_id} stopped during copy")


WebHook = Callable[[str, str, dict], None]
"""post(url, job_uuid, body): POST a failed job's body to its web hook (zsagent.jobs.post_webhook)."""


class Takeover:
    """Reaps stopped agents for ``agent`` (this agent's id). ``janitor``: a zsagent.janitor.Janitor on
    the same store (its ``remove_due`` does the removals); ``post_hook``: see WebHook."""

    def __init__(self, ioctx, rados, agent: str, lease_s: float, store, janitor, post_hook: WebHook) -> None:
        self.ioctx = ioctx
        self.rados = rados
        self.agent_id = agent
        self.lease_s = lease_s
        self.store = store
        self.janitor = janitor
        self.post_hook = post_hook
        self.cookie = new_cookie()
        self._fenced: set[str] = set()  # agents whose Ceph clients this one blocklisted already
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        return self.lease_s / 2

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="zsagent-takeover", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the next pass tries again (e.g. Ceph is busy)
                log.exception("takeover pass failed")

    def run_once(self) -> list[str]:
        """One pass over the registry; returns the uuids of the jobs this pass failed."""
        failed: list[str] = []
        for entry in registered_agents(self.ioctx, self.rados):
            if entry.agent_id != self.agent_id and self._take(entry):
                try:
                    failed += self._reap_holding(entry)
                finally:
                    self._untake(entry)
        return failed

    def _lock(self, entry: AgentEntry, renew: bool) -> None:
        self.ioctx.lock_exclusive(liveness_object(entry.agent_id), ALIVE_LOCK, self.cookie,
                                  desc=f"reaper {self.agent_id}", duration=int(self.lease_s + 0.999),
                                  flags=1 if renew else 0)

    def _take(self, entry: AgentEntry) -> bool:
        try:
            self._lock(entry, renew=False)
        except self.rados.ObjectBusy:
            return False  # alive, or another agent reaps it
        except self.rados.ObjectExists:
            pass  # this agent holds it still (an earlier pass could not give it back)
        return True

    def _untake(self, entry: AgentEntry) -> None:
        try:
            self.ioctx.unlock(liveness_object(entry.agent_id), ALIVE_LOCK, self.cookie)
        except self.rados.Error as e:
            log.info("agent %s: giving its lock back: %s", entry.agent_id, e)

    def _reap_holding(self, entry: AgentEntry) -> list[str]:
        """Reap while renewing the stopped agent's lock (removals may take a while)."""
        lost = threading.Event()

        def renew() -> None:
            try:
                self._lock(entry, renew=True)
            except self.rados.ObjectBusy as e:
                raise LeaseLost("the stopped agent's lock was taken by another client") from e

        renewer = Renewer(f"reap-{entry.agent_id}", renew, self.lease_s / RENEWALS_PER_LEASE, self.lease_s,
                          lambda why: lost.set()).start()
        try:
            return self.reap(entry, lost)
        finally:
            renewer.stop()

    def _fence(self, entry: AgentEntry) -> None:
        runtime = self.janitor.runtime
        if runtime is None or runtime.ceph is None or runtime.ceph.is_fake or not entry.ceph_clients:
            return
        try:
            cluster = runtime.cluster
        except Exception as e:  # noqa: BLE001 - the removals then wait for the watches to time out
            log.info("agent %s: cannot fence its Ceph clients: %s", entry.agent_id, e)
            return
        for address in entry.ceph_clients:
            fencing.fence(cluster, address)
        self._fenced.add(entry.agent_id)

    def reap(self, entry: AgentEntry, lost: threading.Event | None = None) -> list[str]:
        """Fail the agent's unfinished jobs, remove its cluster-wide leftovers, deregister it when none is
        left; the caller holds its liveness lock. Returns the uuids of the jobs failed here."""
        error = stopped_error(entry)
        failed = []
        for job in self.store.unfinished_jobs(owner=entry.agent_id):
            body = {"error": error.to_json()}
            if self.store.fail_job_if_unfinished(job.uuid, body, 503):
                failed.append(job.uuid)
                log.warning("job %s of agent %s failed: %s", job.uuid, entry.agent_id, error.details)
                if job.webhook:
                    self.post_hook(job.webhook, job.uuid, body)
        leftovers = [a for a in self.store.artifacts(owner=entry.agent_id) if cluster_wide(a.kind)]
        if entry.agent_id not in self._fenced and any(LEGACY_KINDS.get(a.kind, a.kind) in CEPH_KINDS
                                                      for a in leftovers):
            self._fence(entry)
        left = self.janitor.remove_due(leftovers)
        if left or (lost is not None and lost.is_set()):
            log.info("agent %s stopped: %d of its leftovers are not removed yet; retried", entry.agent_id, len(left))
            return failed
        deregister(self.ioctx, entry.agent_id)
        log.warning("agent %s (%s) stopped: %d of its jobs failed, its leftovers in Ceph/SFTP removed", entry.agent_id,
                    entry.host, len(failed))
        return failed
