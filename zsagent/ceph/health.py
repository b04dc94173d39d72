"""Ceph's own account of what is wrong, to name the cause when an operation timed out."""

from __future__ import annotations

import errno
import json
import logging
import threading

log = logging.getLogger(__name__)


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def timed_out(error: BaseException | None) -> bool:
    """Whether ``error`` or what caused it is a Ceph (or OS) timeout: ETIMEDOUT, rados.TimedOut,
    rbd.Timeout — what rados_osd_op_timeout / rados_mon_op_timeout end an operation with."""
    return any(getattr(e, "errno", None) == errno.ETIMEDOUT or type(e).__name__ in ("TimedOut", "Timeout")
               for e in _chain(error))


def out_of_space(error: BaseException | None) -> bool:
    """Whether ``error`` or what caused it says the pool or cluster is full (ENOSPC, EDQUOT)."""
    return any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in _chain(error))


def close_later(handle, what: str) -> None:
    """Close an rbd handle on a thread of its own: after a timeout its close may wait for the same OSD
    again, and the failing job should not (what it leaves stays journalled for the cleanup)."""
    def close() -> None:
        try:
            handle.close()
        except Exception as e:  # noqa: BLE001
            log.info("closing %s after a Ceph timeout failed: %s", what, e)

    threading.Thread(target=close, name="zsagent-close-later", daemon=True).start()


def cluster_problems(cluster) -> list[str]:
    """The cluster's health checks now, in Ceph's words (``OSD_DOWN: 1 osds down``); [] when it is
    healthy or cannot tell (the monitors do not answer within rados_mon_op_timeout, the fake backend)."""
    try:
        ret, out, _ = cluster.mon_command(json.dumps({"prefix": "health", "format": "json"}), b"")
        if ret != 0:
            return []
        checks = json.loads(out).get("checks", {})
    except Exception:  # noqa: BLE001 - an explanation is a bonus, never a new failure
        return []
    return [f"{name}: {check.get('summary', {}).get('message', '')}" for name, check in sorted(checks.items())]


def explain(error: BaseException, cluster, osd_op_timeout_s: int) -> str | None:
    """Why a Ceph operation failed, for an ErrorCode's details: a timeout or a full pool, with the
    cluster's own health checks; None for other errors."""
    if timed_out(error):
        what = f"Ceph did not answer within rados_osd_op_timeout={osd_op_timeout_s} s (an OSD down or a pool full?)"
    elif out_of_space(error):
        what = "the Ceph pool is full: nothing was kept of this template"
    else:
        return None
    problems = cluster_problems(cluster) if cluster is not None else []
    return what + (f"; Ceph reports {'; '.join(problems)}" if problems else "")
