"""Fencing a crashed run's Ceph client, so that its leftovers can be removed at once.

An image a killed agent had open keeps that client's watch until the OSD times it out
(``osd_client_watch_timeout``, 30 s by default); until then ``rbd remove`` fails with ImageBusy. The
daemon remembers its client address in the data dir; after a restart that finds Ceph leftovers it
blocklists the previous address (as `rbd lock break` does for a dead lock owner), which drops the watch
at once. Without the mon caps for that, the cleanup just retries until the watch expires.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ADDRESS_FILE = "ceph-client-address"
BLOCKLIST_EXPIRE_S = 3600
"""Ceph's own default for a blocklist entry (mon_osd_blocklist_default_expire)."""


def previous_address(data_dir: str) -> str | None:
    """The client address the last run recorded, if any."""
    try:
        return Path(data_dir, ADDRESS_FILE).read_text().strip() or None
    except OSError:
        return None


def remember_address(data_dir: str, cluster) -> None:
    """Record this run's client address (atomically: a crash leaves the old or the new one)."""
    try:
        address = cluster.get_addrs()
    except Exception:  # noqa: BLE001 - the fake backend has none; fencing is an optimisation
        return
    path = Path(data_dir, ADDRESS_FILE)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{address}\n")
    os.replace(tmp, path)


def fence(cluster, address: str) -> bool:
    """Blocklist ``address`` (a dead run of this agent); True when Ceph took it."""
    try:
        current = cluster.get_addrs()
    except Exception:  # noqa: BLE001
        return False
    if address == current:
        return False
    for candidate in _forms(address):
        try:
            cluster.blocklist_add(candidate, BLOCKLIST_EXPIRE_S)
        except Exception as e:  # noqa: BLE001 - e.g. no mon caps: the cleanup waits for the watch instead
            log.info("could not blocklist the previous run's Ceph client %s: %s", candidate, e)
            continue
        log.info("blocklisted the previous run's Ceph client %s: its watches are gone", candidate)
        return True
    return False


def _forms(address: str) -> list[str]:
    """``[v2:a/n,v1:b/n]`` or ``v1:a/n`` as `ceph osd blocklist add` takes it: each entry, then bare."""
    entries = [a.strip() for a in address.strip("[]").split(",") if a.strip()]
    bare = [e.split(":", 1)[1] if e.startswith(("v1:", "v2:", "any:")) else e for e in entries]
    return list(dict.fromkeys(entries + bare))
