"""One copy per volume across every agent on the cluster: a RADOS lock per volume with a lease.

The lock is a cls_lock exclusive lock ``VOLUME_LOCK`` on the object ``volume.<uuid>`` in the store's
pool and namespace, taken with a duration of ``lease_s`` and renewed every ``lease_s/3`` while the copy
runs (zsagent.cluster.renewal). Its holder's agent id is also kept in the object's xattr ``holder`` (the
lock's description has it too, but python-rados of Pacific cannot list lockers), so that a waiting job
shows whom it waits for. A holder that dies stops renewing and the OSD ends the lock about ``lease_s``
later; one that cannot renew for longer than the lease cancels its copy (``on_lost``) rather than copy
on unguarded.

Why not RBD's exclusive-lock: that lock belongs to the librbd client that writes the image, normally
the VM's QEMU, and librbd hands it over to any other client that asks (cooperative transfer), so it
cannot keep a second agent out; it exists only on RBD images with the feature enabled, not on file
(qcow2/raw) volumes; and its liveness is the client's watch on the image, not a lease of ours that
ends when an agent on another host dies, so no agent could tell a dead copier from a live one.
The lock objects stay after use (removing one could remove the lock another agent just took).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zsagent import errors
from zsagent.cluster.agents import RENEWALS_PER_LEASE, new_cookie
from zsagent.cluster.renewal import LeaseLost, Renewer
from zsagent.errors import ZsError

log = logging.getLogger(__name__)

VOLUME_LOCK = "zsagent-volume"
HOLDER_XATTR = "holder"
WAIT_POLL_S = 0.25
"""How often a waiting job tries the lock again and looks at its cancel switch."""


def lock_object(volume_uuid: str) -> str:
    return f"volume.{volume_uuid}"


class VolumeLock:
    """The per-volume locks of one agent. ``alive()``: this agent holds its liveness lease (a copy
    without it could be taken over under its feet); ``wait_s``: longest wait for another holder (0: no
    limit; the job's own timeout or cancel ends the wait)."""

    def __init__(self, ioctx, rados, agent: str, lease_s: float, wait_s: float = 0.0,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self.ioctx = ioctx
        self.rados = rados
        self.agent_id = agent
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.alive = alive

    def holder(self, volume_uuid: str) -> str | None:
        """The agent that holds (or last held) the volume's lock, when known."""
        try:
            return self.ioctx.get_xattr(lock_object(volume_uuid), HOLDER_XATTR).decode(errors="replace") or None
        except self.rados.Error:
            return None

    def _lock(self, volume_uuid: str, cookie: str, renew: bool) -> None:
        self.ioctx.lock_exclusive(lock_object(volume_uuid), VOLUME_LOCK, cookie, desc=self.agent_id,
                                  duration=int(self.lease_s + 0.999), flags=1 if renew else 0)

    def _try(self, volume_uuid: str, cookie: str) -> bool:
        try:
            self._lock(volume_uuid, cookie, renew=False)
        except self.rados.ObjectBusy:
            return False
        try:
            self.ioctx.set_xattr(lock_object(volume_uuid), HOLDER_XATTR, self.agent_id.encode())
        except BaseException:
            self.ioctx.unlock(lock_object(volume_uuid), VOLUME_LOCK, cookie)
            raise
        return True

    @contextmanager
    def hold(self, volume_uuid: str, cancel: threading.Event | None = None,
             reason: Callable[[], str] = lambda: "cancelled",
             on_wait: Callable[[str | None], None] | None = None,
             on_lost: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the volume's lock while the block runs. While another agent holds it: ``on_wait(holder
        agent id or None)`` once per change of holder, then wait; ZsError CANCELLED (``reason()``) when
        ``cancel`` is set, SYS.1001 when ``wait_s`` ran out, SYS.1006 when this agent holds no liveness
        lease. ``on_lost(reason)``: the lock could not be renewed for longer than its lease."""
        cookie = new_cookie()
        started = time.monotonic()
        told: object = ()
        while True:
            if not self.alive():
                raise errors.operation_failed("this agent does not hold its liveness lease in Ceph (cut off from "
                                              "the cluster?); it takes no copies until it holds it again")
            if self._try(volume_uuid, cookie):
                break
            holder = self.holder(volume_uuid)
            if on_wait is not None and holder != told:
                on_wait(holder)
                told = holder
            waited_s = time.monotonic() - started
            if self.wait_s and waited_s >= self.wait_s:
                raise ZsError(errors.TIMEOUT, f"volume[uuid:{volume_uuid}] is being copied by agent "
                                              f"{holder or '(unknown)'}; waited {waited_s:.0f} s "
                                              f"([cluster] volume_lock_wait_s)")
            if cancel is not None and cancel.wait(WAIT_POLL_S):
                raise ZsError(errors.CANCELLED, f"the job was cancelled while queued: {reason()}")
            if cancel is None:
                time.sleep(WAIT_POLL_S)

        def renew() -> None:
            try:
                self._lock(volume_uuid, cookie, renew=True)
            except self.rados.ObjectBusy as e:
                raise LeaseLost(f"another agent holds the lock of volume[uuid:{volume_uuid}] now") from e

        def lost(why: str) -> None:
            if on_lost is not None:
                on_lost(f"the lock of volume[uuid:{volume_uuid}] in Ceph could not be kept: {why}")

        renewer = Renewer(f"vlock-{volume_uuid[:8]}", renew, self.lease_s / RENEWALS_PER_LEASE, self.lease_s,
                          lost).start()
        try:
            yield
        finally:
            renewer.stop()
            try:
                self.ioctx.unlock(lock_object(volume_uuid), VOLUME_LOCK, cookie)
            except self.rados.Error as e:  # gone already (it ran out): nothing to give back
                log.info("volume %s: unlock: %s", volume_uuid, e)
