"""Freezing guest filesystems (through the QEMU guest agent) around the moment a point in time is taken.

    with frozen([dom], uri=uri, journal=journal, require=False, timeout_s=30) as q:
        take_the_snapshot()
    q.quiesced, q.reason, q.frozen_s

Without a usable guest agent (libvirt: "QEMU guest agent is not configured", VIR_ERR_ARGUMENT_UNSUPPORTED;
"not connected"/"not responding", VIR_ERR_AGENT_UNRESPONSIVE; or any other freeze error) the block runs
unfrozen and ``q.quiesced`` is False with the reason; with ``require=True`` that is QuiesceRequired
instead, raised *before* the block runs. The thaw is guaranteed: it runs when the block ends or raises,
and a timer thaws the guest after ``timeout_s`` even while the block is still running (then the result
is not quiesced either, and ``require=True`` raises QuiesceRequired after the block).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from zsagent.virt.connection import error_code, libvirt_module, lookup_domain, open_connection
from zsagent.virt.errors import QuiesceRequired, VirtError
from zsagent.virt.journal import FSFREEZE, UndoJournal, UndoStep
from zsagent.virt.locks import domain_lock

log = logging.getLogger(__name__)

DEFAULT_FREEZE_TIMEOUT_S = 30.0


@dataclass
class QuiesceResult:
    """quiesced: every domain's filesystems were frozen for the whole block; reason: why not (None when
    quiesced); frozen_s: length of the frozen window in seconds (None when nothing was frozen);
    filesystems: how many filesystems the guest agents froze."""

    quiesced: bool = False
    reason: str | None = None
    frozen_s: float | None = None
    filesystems: int = 0


def _no_agent_codes() -> set[int]:
    """Errors after which no freeze can have happened, so no thaw is needed."""
    libvirt = libvirt_module()
    return {libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT}


class _Thaw:
    """Thaws the frozen domains once, from the timer or from the caller, whichever comes first."""

    def __init__(self, frozen: list[tuple[Any, UndoStep]], journal: UndoJournal, result: QuiesceResult,
                 started: float) -> None:
        self.frozen = frozen
        self.journal = journal
        self.result = result
        self.started = started
        self.lock = threading.Lock()
        self.names = ", ".join(dom.name() for dom, _ in frozen)

    def __call__(self, by_timer: bool = False) -> list[str]:
        """Thaw what is still frozen; returns the errors of domains that could not be thawed."""
        with self.lock:
            if not self.frozen:
                return []
            if self.result.frozen_s is None:
                self.result.frozen_s = time.monotonic() - self.started
            if by_timer:
                self.result.quiesced = False
                self.result.reason = (f"the freeze timeout ({self.result.frozen_s:.1f} s) thawed the guest before "
                                      "the point in time was taken")
            errors, still = [], []
            for dom, step in self.frozen:
                try:
                    dom.fsThaw()
                except Exception as e:  # noqa: BLE001 - reported below, kept in the journal
                    errors.append(f"domain {dom.name()}: {e}")
                    still.append((dom, step))
                    continue
                self.journal.done(step)
            self.frozen = still
        log.log(logging.WARNING if by_timer or errors else logging.INFO,
                "domain %s: filesystems frozen for %.3f s%s%s", self.names, self.result.frozen_s,
                " (thawed by the freeze timeout)" if by_timer else "",
                f"; thaw failed: {errors}" if errors else "")
        return errors


@contextmanager
def frozen(domains: Sequence[Any], *, uri: str, journal: UndoJournal, require: bool = False,
           timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S) -> Iterator[QuiesceResult]:
    """Freeze the filesystems of ``domains`` (virDomain objects) for the duration of the block."""
    libvirt = libvirt_module()
    result = QuiesceResult()
    with ExitStack() as locks:
        for dom in sorted(domains, key=lambda d: d.UUIDString()):
            locks.enter_context(domain_lock(dom.UUIDString(), "freeze"))
        done: list[tuple[Any, UndoStep]] = []
        started = time.monotonic()
        for dom in domains:
            step = journal.add(FSFREEZE, {"uri": uri, "domain_uuid": dom.UUIDString(), "domain": dom.name()})
            try:
                result.filesystems += dom.fsFreeze()
            except libvirt.libvirtError as e:
                result.reason = f"could not freeze the filesystems of domain {dom.name()}: {e.get_error_message()}"
                if error_code(e) not in _no_agent_codes():
                    _thaw_quietly(dom)  # a freeze that timed out may still complete in the guest
                journal.done(step)
                break
            done.append((dom, step))
        thaw = _Thaw(done, journal, result, started)
        if result.reason is not None:
            errors = thaw()
            if errors:
                raise VirtError(f"{result.reason}; then could not thaw: {'; '.join(errors)}")
            if require:
                raise QuiesceRequired(f"{result.reason} (quiescing is required)")
            log.warning("%s: the point in time will be crash-consistent", result.reason)
            yield result
            return

        result.quiesced = True
        timer = threading.Timer(timeout_s, thaw, kwargs={"by_timer": True})
        timer.daemon = True
        timer.start()
        try:
            yield result
        except BaseException:
            timer.cancel()
            errors = thaw()
            if errors:
                log.error("could not thaw after a failure: %s", "; ".join(errors))
            raise
        timer.cancel()
        errors = thaw()
        if errors:
            raise VirtError(f"could not thaw the guest filesystems: {'; '.join(errors)}")
        if require and not result.quiesced:
            raise QuiesceRequired(f"{result.reason} (quiescing is required)")


def _thaw_quietly(dom) -> None:
    try:
        dom.fsThaw()
    except Exception:  # noqa: BLE001 - best effort after a failed freeze
        pass


def undo_freeze(spec: dict[str, Any]) -> None:
    """Thaw a domain whose freeze was journalled (after a crash between freeze and thaw)."""
    libvirt = libvirt_module()
    conn = open_connection(spec["uri"])
    try:
        dom = lookup_domain(conn, spec["domain_uuid"])
        if dom is None or not dom.isActive():  # gone or stopped: nothing is frozen
            return
        try:
            dom.fsThaw()
        except libvirt.libvirtError as e:
            if error_code(e) in (libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_INVALID):
                return  # no agent (nothing was frozen) or the domain stopped
            raise
    finally:
        conn.close()
