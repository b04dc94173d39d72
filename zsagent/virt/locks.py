"""In-process locks per domain, so that two copies never run conflicting libvirt jobs on one domain.

"job": held for a whole point-in-time view of a file volume (a domain runs one backup job at a time, and
a second backupBegin waits 30 s for libvirt's state-change lock, then fails). "freeze": held around one
fsFreeze/fsThaw window (the guest agent refuses to freeze twice). A long file-volume copy of a domain
therefore delays the next file-volume copy of the same domain, never an RBD snapshot of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_guard = threading.Lock()
_locks: dict[tuple[str, str], threading.Lock] = {}


@contextmanager
def domain_lock(domain_uuid: str, purpose: str) -> Iterator[None]:
    """Hold the ``purpose`` ("job" or "freeze") lock of one domain."""
    with _guard:
        lock = _locks.setdefault((domain_uuid, purpose), threading.Lock())
    with lock:
        yield
