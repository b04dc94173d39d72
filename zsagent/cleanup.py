"""Removing what a job left behind (journalled artifacts) and deleting published templates: one table
from kind to remover, built from the storage kinds (zsagent.storages) and the other artifact kinds.

Every remover is idempotent: removing what is already gone is not an error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zsagent.ceph.snapshots import JOURNAL_KIND as SNAPSHOT_KIND
from zsagent.ceph.snapshots import forget_snapshot
from zsagent.sinks.converted import SPOOL_KIND
from zsagent.sources.qemu_nbd import TEMP_DIR_KIND, TEMP_DIR_PREFIX
from zsagent.storages import KINDS
from zsagent.storages.base import Runtime
from zsagent.storages.filesystem import remove_file
from zsagent.virt import undo_step
from zsagent.virt.journal import KINDS as VIRT_KINDS

Remover = Callable[[dict[str, Any], Runtime], None]

# Names written by agents before the storage kinds had one name each: still found in old journals/records.
LEGACY_KINDS = {"rbd-image": "ceph", "rbd": "ceph", "file": "filesystem", "sftp-file": "sftp",
                "rbd-snapshot": SNAPSHOT_KIND}


def _snapshot(spec: dict[str, Any], runtime: Runtime) -> None:
    forget_snapshot(runtime.ceph, runtime.cluster, spec["pool"], spec["image"], spec["snapshot"])


def _spool(spec: dict[str, Any], runtime: Runtime) -> None:
    Path(spec["path"]).unlink(missing_ok=True)


def _temp_dir(spec: dict[str, Any], runtime: Runtime) -> None:
    """A local temporary directory of the agent's (only ever one of its own, by name)."""
    path = Path(spec["path"])
    if not path.name.startswith(TEMP_DIR_PREFIX):
        raise ValueError(f"{path} is not a temporary directory of the agent")
    shutil.rmtree(path, ignore_errors=True)


def _virt(kind: str) -> Remover:
    """A change to a libvirt domain (freeze, backup job, overlay): undone by zsagent.virt."""
    return lambda spec, runtime: undo_step(kind, spec)


MANAGED_KIND = "zstack-managed"
"""A template made for a ZStack management node's command (zsagent.front): ZStack owns and deletes it;
deleting our record of it leaves it in place."""


def _managed(spec: dict[str, Any], runtime: Runtime) -> None:
    """Nothing to do: the management node deletes its templates through its own backup-storage agents."""


REMOVERS: dict[str, Remover] = {
    **{name: kind.remove for name, kind in KINDS.items()},
    SNAPSHOT_KIND: _snapshot,
    SPOOL_KIND: _spool,
    TEMP_DIR_KIND: _temp_dir,
    MANAGED_KIND: _managed,
    **{kind: _virt(kind) for kind in VIRT_KINDS},
}


def remove(kind: str, spec: dict[str, Any], runtime: Runtime) -> None:
    """Remove one journalled artifact, or a published template given its ref (``kind`` = ``ref["kind"]``)."""
    remover = REMOVERS.get(LEGACY_KINDS.get(kind, kind))
    if remover is None:
        raise ValueError(f"unknown artifact kind {kind!r}")
    remover(spec, runtime)


__all__ = ["LEGACY_KINDS", "MANAGED_KIND", "REMOVERS", "remove", "remove_file"]
