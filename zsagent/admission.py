"""Who may copy now: one job per volume at a time, and at most ``max_jobs`` copies at once (the rest
queue, and a queued job can still be cancelled). With several agents on one cluster, one job per volume
across all of them: ``cluster_lock`` (zsagent.cluster.volume_lock) is held inside the process' own lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zsagent import errors
from zsagent.errors import ZsError

QUEUE_POLL_S = 0.2
"""How often a queued job looks at its cancel switch."""


class Admission:
    def __init__(self, max_jobs: int) -> None:
        self._slots = threading.BoundedSemaphore(max_jobs)
        self._volume_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()
        self.cluster_lock = None  # a zsagent.cluster.volume_lock.VolumeLock when agents share the cluster

    @contextmanager
    def volume(self, volume_uuid: str, cancel: threading.Event | None = None,
               reason: Callable[[], str] = lambda: "cancelled",
               on_wait: Callable[[str | None], None] | None = None,
               on_lost: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the volume's lock (requests for one volume are serialized; the lock is dropped when
        nobody waits for it any more); ZsError CANCELLED (saying ``reason()``) when ``cancel`` is set
        while waiting behind another job of the same volume. With ``cluster_lock``: also the volume's
        lock across agents (``on_wait(agent id)`` while another agent holds it, ``on_lost(reason)`` when
        it could not be kept, see VolumeLock.hold)."""
        with self._guard:
            lock, users = self._volume_locks.get(volume_uuid, (threading.Lock(), 0))
            self._volume_locks[volume_uuid] = (lock, users + 1)
        try:
            while not lock.acquire(timeout=QUEUE_POLL_S):
                if cancel is not None and cancel.is_set():
                    raise ZsError(errors.CANCELLED, f"the job was cancelled while queued: {reason()}")
            try:
                if self.cluster_lock is None:
                    yield
                else:
                    with self.cluster_lock.hold(volume_uuid, cancel, reason, on_wait, on_lost):
                        yield
            finally:
                lock.release()
        finally:
            with self._guard:
                lock, users = self._volume_locks[volume_uuid]
                if users == 1:
                    del self._volume_locks[volume_uuid]
                else:
                    self._volume_locks[volume_uuid] = (lock, users - 1)

    @contextmanager
    def slot(self, cancel: threading.Event, reason: Callable[[], str]) -> Iterator[None]:
        """Hold one of the copy slots; ZsError CANCELLED (saying ``reason()``) when ``cancel`` is set while
        waiting."""
        while not self._slots.acquire(timeout=QUEUE_POLL_S):
            if cancel.is_set():
                raise ZsError(errors.CANCELLED, f"the job was cancelled while queued: {reason()}")
        try:
            yield
        finally:
            self._slots.release()
