"""Ceph's own account of what is wrong, to name the cause when an operation timed out."""

from __future__ import annotations

import errno
import json
import logging
import threading

log = logging.getLogger(__name__)


def timed_out(error: BaseException | None) -> bool:
    """Whether ``error`` or what caused it is a Ceph (or OS) timeout: ETIMEDOUT, rados.TimedOut,
    rbd.Timeout — what rados_osd_op_timeout / rados_mon_op_timeout end an operation with."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ETIMEDOUT or type(error).__name__ in ("TimedOut", "Timeout"):
            return True
        error = error.__cause__ or error.__context__
    return False


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


def explain_timeout(cluster, osd_op_timeout_s: int) -> str:
    """Why a Ceph operation timed out, for an ErrorCode's details."""
    problems = cluster_problems(cluster) if cluster is not None else []
    said = f"; Ceph reports {'; '.join(problems)}" if problems else ""
    return f"Ceph did not answer within rados_osd_op_timeout={osd_op_timeout_s} s (an OSD down or a pool full?){said}"
