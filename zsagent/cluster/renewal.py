"""Keeps one lease alive: calls ``renew`` every ``interval_s`` on a thread of its own, and says once when
it could not renew for longer than the lease (``on_lost``), so that the holder stops what the lease
protects before another agent may take it.

A renewal that hangs (an OSD down: librados waits up to ``rados_osd_op_timeout``) must not hide the
loss, so each call runs on a worker thread and the loop only waits ``interval_s`` for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """``renew`` raises it when the lease is gone for sure (another holder has it): lost at once."""


class Renewer:
    """``renew()``: one renewal (raises on failure; LeaseLost when it is gone for sure); ``lease_s``: how
    long the lease lasts after a successful renewal; ``on_lost(reason)``: called once, on the renewer's
    thread, when it ran out."""

    def __init__(self, name: str, renew: Callable[[], None], interval_s: float, lease_s: float,
                 on_lost: Callable[[str], None]) -> None:
        self.name = name
        self._renew = renew
        self.interval_s = interval_s
        self.lease_s = lease_s
        self._on_lost = on_lost
        self.renewed_at = time.monotonic()  # the last successful renewal (or the acquisition)
        self.lost: str | None = None  # why the lease ran out, once it did
        self._stop = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-call")
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Renewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.interval_s + 1)
        self._worker.shutdown(wait=False, cancel_futures=True)

    @property
    def held(self) -> bool:
        """The lease was renewed within ``lease_s`` and is not known lost."""
        return self.lost is None and time.monotonic() - self.renewed_at < self.lease_s

    def _loop(self) -> None:
        pending: Future | None = None
        started = time.monotonic()
        last_error = "no answer from Ceph"
        while not self._stop.wait(self.interval_s):
            if pending is None:
                started = time.monotonic()
                try:
                    pending = self._worker.submit(self._renew)
                except RuntimeError:  # stopped meanwhile (the worker is shut down)
                    return
            try:
                pending.result(timeout=self.interval_s)
                self.renewed_at = started
                pending = None
                continue
            except TimeoutError:
                last_error = f"a renewal has not answered for {time.monotonic() - started:.1f} s"
            except LeaseLost as e:
                self._lose(str(e))
                return
            except Exception as e:  # noqa: BLE001 - retried until the lease runs out
                last_error = f"{type(e).__name__}: {e}"
                pending = None
                log.warning("%s: renewal failed (retried): %s", self.name, last_error)
            silent_s = time.monotonic() - self.renewed_at
            if silent_s >= self.lease_s:
                self._lose(f"not renewed for {silent_s:.1f} s (lease {self.lease_s:g} s): {last_error}")
                return

    def _lose(self, reason: str) -> None:
        self.lost = reason
        log.error("%s: lease lost: %s", self.name, reason)
        try:
            self._on_lost(reason)
        except Exception:  # noqa: BLE001
            log.exception("%s: handling the lost lease failed", self.name)
