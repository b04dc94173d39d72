"""Test-only fault hook: named points in the agent where a test makes it crash, stall or fail on purpose.

Armed by the environment variable ``ZSAGENT_FAULT`` (off in production: unset, every point is one dict
lookup; the systemd unit removes the variable with ``UnsetEnvironment=``):

    ZSAGENT_FAULT=<point>[@<fraction>][:<action>][*<times>][,<point>...]

actions: ``kill`` (the default: SIGKILL the whole process, as a crash or the OOM killer would), ``term``
(SIGTERM to itself, then carry on: a stop request at that exact moment), ``stall`` (block this thread for
good), ``error`` (raise FaultInjected, an OSError), ``sleep=<seconds>``. ``@<fraction>`` is for
points that report progress (``copy-mid``): the fault fires once ``done >= fraction * total``
(default 0.5). An armed point fires once per process, or ``*<times>`` times.

Points (see POINTS) are placed by the code that owns each step; a new one is one ``hit()`` call and
one line in POINTS.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "ZSAGENT_FAULT"

POINTS = {
    "snapshot-taken": "the source snapshot exists (RBD) or the file volume's point in time is open",
    "copy-first-chunk": "the first chunk has been written to every sink",
    "copy-mid": "the copy has passed a fraction of the volume (@fraction, default 0.5)",
    "publish-before-rename": "a template is complete under its .part name, its final name journalled",
    "publish-after-rename": "a template has its final name, its .part entry not yet forgotten",
    "sftp-rename": "the SFTP RENAME of .part to the final name is on the wire, its answer not yet read",
    "record-before": "every template is published; the image record is not yet written",
    "cleanup": "an artifact is about to be removed (a failing sink's abort, a job's or a restart's cleanup)",
    "reconcile": "the restarted agent is about to clean what the previous run left",
}
"""Every point the agent has, and the moment it marks."""


class FaultInjected(OSError):
    """What the ``error`` action raises."""


@dataclass
class _Fault:
    point: str
    action: str
    fraction: float = 0.5
    seconds: float = 0.0
    times: int = 1

    def fire(self) -> None:
        with _lock:
            if self.times <= 0:
                return
            self.times -= 1
        log.warning("fault hook: %s at %s", self.action, self.point)
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # the signal is delivered before this returns
        elif self.action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.action == "stall":
            threading.Event().wait()
        elif self.action == "sleep":
            time.sleep(self.seconds)
        elif self.action == "error":
            raise FaultInjected(5, f"fault injected at {self.point}")


_lock = threading.Lock()


def parse(text: str | None) -> dict[str, _Fault]:
    """The faults ``text`` (ZSAGENT_FAULT's value) arms; ValueError for an unknown point or action."""
    armed: dict[str, _Fault] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        item, _, times = item.partition("*")
        where, _, action = item.partition(":")
        point, _, fraction = where.partition("@")
        action, _, argument = (action or "kill").partition("=")
        if point not in POINTS:
            raise ValueError(f"{ENV}: unknown point {point!r} (known: {', '.join(POINTS)})")
        if action not in ("kill", "term", "stall", "sleep", "error"):
            raise ValueError(f"{ENV}: unknown action {action!r} (kill, term, stall, sleep=<s>, error)")
        armed[point] = _Fault(point, action, float(fraction) if fraction else 0.5,
                              float(argument) if argument else 0.0, int(times) if times else 1)
    return armed


_ARMED: dict[str, _Fault] = parse(os.environ.get(ENV))
if _ARMED:
    log.warning("fault hook armed by %s (test only): %s", ENV, ", ".join(_ARMED))


def hit(point: str) -> None:
    """Mark ``point``; fires the fault armed there, if any."""
    fault = _ARMED.get(point)
    if fault is not None:
        fault.fire()


def progressed(point: str, done: int, total: int) -> None:
    """Mark progress at ``point``: fires its fault once ``done`` reaches its fraction of ``total``."""
    fault = _ARMED.get(point)
    if fault is not None and done >= fault.fraction * total:
        fault.fire()


def arm(text: str | None) -> None:
    """Replace what is armed (for tests inside one process); None disarms everything."""
    global _ARMED
    _ARMED = parse(text)
